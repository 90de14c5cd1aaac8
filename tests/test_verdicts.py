"""The verdict rules of ``llm2nifti study`` on hand-made numbers: each decision, and where it refuses to decide."""

from __future__ import annotations

import pytest

from llm2nifti import verdicts
from llm2nifti.verdicts import FAILS, HOLDS, UNDECIDED


def _row(delta, null, name="union", n_neurons=100, warnings=()):
    from llm2nifti.evaluation.statistics import null_summary

    return {"name": name, "n_neurons": n_neurons, "delta_loss": delta, "null": null_summary(delta, null),
            "set": {"variance_share": 0.1}, "warnings": list(warnings)}


def _template(name, best, chance, p, share=0.1, n=30):
    return {"name": name, "n_neurons": n, "best_iou": best, "chance": chance, "p_value": p,
            "largest_layer_share": share}


def test_recurrence_needs_every_part_above_threshold_and_chance():
    everywhere = _template("C0", [0.5, 0.6, 0.4], [0.05, 0.05, 0.05], 0.001)
    once_below_chance = _template("C1", [0.5, 0.25, 0.4], [0.05, 0.3, 0.05], 0.001)
    assert verdicts.recurrence_verdict([everywhere], 3, 0.2).verdict == HOLDS
    assert verdicts.recurrence_verdict([once_below_chance], 3, 0.2).verdict == FAILS
    weak = _template("C2", [0.19, 0.6, 0.6], [0.01, 0.01, 0.01], 0.001)
    assert verdicts.recurrence_verdict([weak], 3, 0.2).verdict == FAILS
    assert verdicts.recurrence_verdict([_template("C3", [0, 0], [0, 0], None, n=0)], 2, 0.2).verdict == UNDECIDED


def test_a_recurring_layer_block_is_flagged():
    block = _template("C7", [0.9, 0.9], [0.19, 0.19], 0.001, share=0.51)
    verdict = verdicts.recurrence_verdict([block], 2, 0.2)
    assert verdict.verdict == HOLDS and "C7" in verdict.notes[0] and "one layer" in verdict.notes[0]


def test_lesion_holds_only_beyond_every_control_and_is_undecided_with_too_few():
    null = [0.1 * i for i in range(19)]
    assert verdicts.lesion_verdict(_row(5.0, null), []).verdict == HOLDS
    assert verdicts.lesion_verdict(_row(1.0, null), []).verdict == FAILS
    few = verdicts.lesion_verdict(_row(5.0, null[:9]), [])
    assert few.verdict == UNDECIDED and "cannot give p <= 0.05" in " ".join(few.notes)


def test_lesion_says_when_magnitude_alone_does_more():
    verdict = verdicts.lesion_verdict(_row(5.0, [0.0] * 19), [], reference=_row(9.0, [0.0] * 19, "variance-ranked"))
    assert "magnitude alone does more" in " ".join(verdict.notes)


def test_preservation_uses_the_lower_tail():
    null = [1.0 + 0.1 * i for i in range(19)]
    better = {"k": 3, "n_neurons": 50, "delta_loss": 0.5, "null": _row(0.5, null)["null"],
              "p_lower": verdicts.lower_p(0.5, null)}
    worse = dict(better, delta_loss=3.0, p_lower=verdicts.lower_p(3.0, null))
    assert better["p_lower"] == pytest.approx(1 / 20)
    assert verdicts.preservation_verdict({"keep": [better]}, 3.0).verdict == HOLDS
    assert verdicts.preservation_verdict({"keep": [worse]}, 3.0).verdict == FAILS
    assert verdicts.preservation_verdict({}, 3.0).verdict == UNDECIDED


def test_set_verdict_words():
    assert "does not matter beyond magnitude" in verdicts.set_verdict(_row(0.1, [0.2] * 19, "decoy")).measured
    assert verdicts.set_verdict(_row(3.0, [0.2] * 19, "net")).verdict == HOLDS


def test_per_layer_notes_are_condensed_to_one_per_kind():
    notes = [f"layer {i}: the condition holds {p}% of one of its strata; read it with care" for i, p in
             ((0, 30), (4, 81), (9, 25))] + ["layer 2: 3 of its bins were widened (bins 1, 2, 3)",
                                              "layer 5: 1 of its bins were widened (bins 9)", "a plain note"]
    out = verdicts.condense(notes)
    assert out[0] == "a plain note"
    assert out[1].startswith("3 layers (0, 4, 9); the worst, layer 4: the condition holds 81%")
    assert out[2].startswith("2 layers (2, 5)")
    assert len(out) == 3


def test_a_set_beyond_unmatched_controls_is_inconclusive_unless_it_beats_magnitude():
    null = [0.1] * 19
    row = dict(_row(5.0, null), control_variance_ratio=0.3)
    weaker_reference = _row(2.0, null, "variance-ranked")
    stronger_reference = _row(9.0, null, "variance-ranked")
    assert verdicts.lesion_verdict(row, [], reference=weaker_reference).verdict == HOLDS
    unsure = verdicts.lesion_verdict(row, [], reference=stronger_reference)
    assert unsure.verdict == UNDECIDED and "favours it" in unsure.notes[0]
    assert verdicts.lesion_verdict(row, []).verdict == UNDECIDED  # no reference: cannot rule magnitude out
    assert verdicts.set_verdict(row).verdict == UNDECIDED
    assert verdicts.set_verdict(dict(_row(5.0, null), control_variance_ratio=0.95)).verdict == HOLDS
