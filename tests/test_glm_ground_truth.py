"""Ground truth for the token-event GLM: planted networks driven by a token class and by sentence blocks.

The model (:func:`planted_gpt2`) is a 2-layer GPT-2 whose residual stream is
the token embedding plus the position embedding, unchanged through the layers
(every attention and MLP output projection is zero). The stream is built from
orthonormal directions, all orthogonal to the all-ones vector, so LayerNorm is
a constant scaling:

- token ``v`` carries one of three directions with the same length: ``D`` if
  it is a digit, ``S`` if it is a lower-case letter, ``F`` otherwise;
- position ``p`` carries a random unit vector of a separate subspace, so the
  position drives a "background" that is unrelated to what the tokens are.

Every ``mlp.hidden`` neuron reads a random position direction (background,
and the noise of the GLM's residuals); in each layer 8 neurons also read
``D`` (the *digit network*) and 8 read ``S`` (the *lower-case network*).

The text alternates sentence blocks (lower-case words with numbers and
punctuation) with their control: the same string in upper case, so digits,
punctuation, spaces and lengths are matched and only the lower-case network
tells the blocks apart; it fires only inside sentence blocks. The export's
events label each token ``sentence``/``nonword`` (annotations, character
spans); ``char_class`` is built in.

nilearn's GLM (``llm2nifti glm``) with nilearn's Bonferroni threshold
(``threshold_stats_img``, alpha 0.05) must recover:

- ``digit - letter`` (trial_type ``char_class``): the digit network, IoU >= 0.9;
- ``sentence - nonword`` (trial_type ``label``): the lower-case network, IoU >= 0.9;
- ``punctuation - whitespace``, which no network tells apart: no neuron.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import byte_tokenizer

from llm2nifti import export
from llm2nifti.models import LoadedModel, config_sha256
from llm2nifti.workflows.glm import run_glm

HIDDEN = 32
INTERMEDIATE = 64
N_LAYERS = 2
MEMBERS = 8
RUN_TOKENS = 256
IOU_MIN = 0.9
ALPHA = 0.05


def planted_gpt2(seed: int = 0):
    """The planted GPT-2 (see the module docstring); returns the model and ``{"digit": set, "lower": set}``."""
    import torch
    import transformers as tf

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    config = tf.GPT2Config(vocab_size=258, n_positions=RUN_TOKENS, n_embd=HIDDEN, n_layer=N_LAYERS, n_head=2,
                           n_inner=INTERMEDIATE, bos_token_id=256, eos_token_id=257)
    model = tf.GPT2LMHeadModel(config).eval()
    tokenizer = byte_tokenizer(bos=False)
    start = np.column_stack([np.ones(HIDDEN), rng.standard_normal((HIDDEN, HIDDEN - 1))])
    basis, _ = np.linalg.qr(start)  # column 0 is the all-ones direction: left out of everything
    digit_dir, lower_dir, other_dir, positions = basis[:, 1], basis[:, 2], basis[:, 3], basis[:, 4:]

    embedding = np.zeros((config.vocab_size, HIDDEN))
    for v in range(config.vocab_size):
        text = tokenizer.decode([v])
        embedding[v] = 3.0 * (digit_dir if text.isdecimal() else lower_dir if text.islower() and text.isalpha()
                              else other_dir)
    position_vectors = rng.standard_normal((RUN_TOKENS, positions.shape[1]))
    position_vectors /= np.linalg.norm(position_vectors, axis=1, keepdims=True)

    def tensor(a):
        return torch.tensor(np.asarray(a), dtype=torch.float32)

    truth = {"digit": set(), "lower": set()}
    with torch.no_grad():
        model.transformer.wte.weight.copy_(tensor(embedding))
        model.transformer.wpe.weight.copy_(tensor(3.0 * position_vectors @ positions.T))
        for layer, block in enumerate(model.transformer.h):
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
            background = rng.standard_normal((positions.shape[1], INTERMEDIATE))
            weight = positions @ (background / np.linalg.norm(background, axis=0))  # (HIDDEN, INTERMEDIATE)
            bias = np.zeros(INTERMEDIATE)
            order = rng.permutation(INTERMEDIATE)
            for k, (name, direction) in enumerate((("digit", digit_dir), ("lower", lower_dir))):
                members = order[k * MEMBERS:(k + 1) * MEMBERS]
                truth[name].update((layer, int(n)) for n in members)
                weight[:, members] += 2.0 * direction[:, None]
                bias[members] = -1.0
            block.mlp.c_fc.weight.copy_(tensor(weight))
            block.mlp.c_fc.bias.copy_(tensor(bias))
    provenance = {"ModelID": "planted-gpt2-glm", "ModelClass": type(model).__name__, "ModelRevision": None,
                  "ModelFileSHA256": None, "ModelConfigSHA256": config_sha256(config)}
    return LoadedModel(model, tokenizer, provenance), truth


WORDS = ("the quick brown fox jumps over a lazy dog while seven wise owls watch from old oak trees near "
         "quiet rivers and tall green hills under pale morning light").split()


def block_text(n_pairs: int, seed: int = 0):
    """Sentence blocks and their upper-case controls; returns the text and ``(start, end, label)`` spans.

    Blocks have random lengths: the background is a function of the position in a run, and blocks that fell
    at the same positions in every run would make it look block-related.
    """
    rng = np.random.default_rng(seed)
    parts, spans, position = [], [], 0
    for _ in range(n_pairs):
        n_words = int(rng.integers(4, 24))  # lengths vary, so blocks fall at other positions in every run
        words = [str(w) for w in rng.choice(WORDS, n_words)]
        for i in rng.choice(n_words, 2, replace=False):
            words[i] = str(rng.integers(10, 1000))
        cut = n_words // 2
        sentence = " ".join(words[:cut]) + ", " + " ".join(words[cut:]) + "."
        for block, label in ((sentence, "sentence"), (sentence.upper(), "nonword")):
            if parts:
                parts.append("\n\n")
                position += 2
            parts.append(block)
            spans.append((position, position + len(block), label))
            position += len(block)
    return "".join(parts) + "\n", spans


@pytest.fixture(scope="module")
def planted_glm_export(tmp_path_factory):
    loaded, truth = planted_gpt2()
    root = tmp_path_factory.mktemp("glm-truth")
    text, spans = block_text(80)
    (root / "blocks.txt").write_text(text)
    (root / "blocks.tsv").write_text("start\tend\tlabel\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in spans))
    result = export(root / "export", loaded, str(root / "blocks.txt"), site="mlp.hidden", run_tokens=RUN_TOKENS,
                    max_runs=4, annotations=root / "blocks.tsv", progress=False)
    return result, truth


def recovered(result, glm, c: int) -> set:
    from nilearn.glm import threshold_stats_img

    z = glm.glm.values("z")[c]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nilearn notes a threshold above the map's maximum
        _, threshold = threshold_stats_img(glm.glm.maps_[c].z_img, mask_img=str(result.paths.mask), alpha=ALPHA,
                                           height_control="bonferroni")
    ids = np.flatnonzero(z > threshold)
    return {tuple(int(x) for x in divmod(i, result.layout.n_neurons)) for i in ids}


def iou(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def test_planted_model_does_what_it_says(planted_glm_export):
    """Digit members fire on digits only; lower-case members only inside sentence blocks."""
    import nibabel as nib

    from llm2nifti.formats.tables import read_tsv

    result, truth = planted_glm_export
    data = np.asarray(nib.load(result.paths.bold(1)).dataobj)[tuple(result.layout.voxels.T)].T
    events = read_tsv(result.paths.events(1), ("char_class", "label"))
    digit = np.array([e["char_class"] == "digit" for e in events])
    sentence = np.array([e["label"] == "sentence" for e in events])
    nonword = np.array([e["label"] == "nonword" for e in events])
    ids = {name: [layer * INTERMEDIATE + n for layer, n in members] for name, members in truth.items()}
    assert data[digit][:, ids["digit"]].mean() > data[~digit][:, ids["digit"]].mean() + 1.0
    assert data[sentence][:, ids["lower"]].mean() > data[nonword][:, ids["lower"]].mean() + 0.5
    assert data[nonword][:, ids["lower"]].max() < data[sentence][:, ids["lower"]].max() / 4


def test_glm_recovers_digit_and_sentence_networks_and_nothing_else(planted_glm_export, tmp_path):
    result, truth = planted_glm_export
    by_class = run_glm(result.out_dir, ["digit - letter", "punctuation - whitespace"], tmp_path / "glm-class",
                       trial_type="char_class", progress=False)
    by_block = run_glm(result.out_dir, "sentence - nonword", tmp_path / "glm-block", trial_type="label",
                       progress=False)
    digit = recovered(result, by_class, 0)
    assert iou(digit, truth["digit"]) >= IOU_MIN, (sorted(digit), sorted(truth["digit"]))
    lower = recovered(result, by_block, 0)
    assert iou(lower, truth["lower"]) >= IOU_MIN, (sorted(lower), sorted(truth["lower"]))
    unrelated = recovered(result, by_class, 1)
    assert not unrelated, sorted(unrelated)


def test_glm_maps_import_back_to_the_planted_network(planted_glm_export, tmp_path):
    """``zmaps.nii.gz`` is on the export's grid: ``llm2nifti import`` (no re-z-scoring) gives the network."""
    from click.testing import CliRunner

    from llm2nifti.cli import main
    from llm2nifti.formats.selection import read_mask

    result, truth = planted_glm_export
    runner = CliRunner()
    run = runner.invoke(main, ["glm", str(result.out_dir), "--trial-type", "char_class", "--contrast",
                               "digit - letter", "--no-figures", "--quiet", "--out", str(tmp_path / "glm")])
    assert run.exit_code == 0, run.output
    run = runner.invoke(main, ["import", str(tmp_path / "glm" / "zmaps.nii.gz"), "--export", str(result.out_dir),
                               "--no-zscore", "--top-k", str(len(truth["digit"])), "--out", str(tmp_path / "imp")])
    assert run.exit_code == 0, run.output
    assert iou(read_mask(tmp_path / "imp").neurons("C0"), truth["digit"]) >= IOU_MIN
