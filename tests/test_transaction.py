"""OutputTransaction and OutputLock: swaps, failures, leftovers of killed runs, and the lock between processes."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time

import pytest
from faults import KillSwitch, hidden_beside, installed, lock_holder, sigkill, tree_hash

from llm2nifti import transaction
from llm2nifti.errors import OutputExistsError, OutputLockedError
from llm2nifti.transaction import OutputLock, OutputTransaction, SimulatedKill

RECORD = "record.json"


def is_test_output(path):
    return (path / RECORD).is_file()


def write_output(root, label: str) -> None:
    """A small output of the test kind: a nested file and the completion mark last."""
    transaction.make_dirs(root / "sub")
    transaction.write_text(root / "sub" / "data.txt", f"data of {label}\n")
    transaction.write_json(root / RECORD, {"label": label})


def make_output(path, label: str = "old"):
    path.mkdir(parents=True)
    write_output(path, label)
    return tree_hash(path)


def label_of(path) -> str:
    return json.loads((path / RECORD).read_text())["label"]


def transaction_for(out, **kwargs) -> OutputTransaction:
    return OutputTransaction(out, what="test output", is_output=is_test_output, **kwargs)


def build(out, label: str = "new", **kwargs):
    with transaction_for(out, **kwargs) as tx:
        write_output(tx.staging, label)
        tx.commit()
    return tx


@pytest.fixture
def info_log(caplog):
    caplog.set_level(logging.INFO, logger="llm2nifti")
    return caplog


@pytest.fixture(params=["exchange", "two renames"])
def swap_kind(request, monkeypatch, tmp_path):
    """Each test that replaces an output runs with ``RENAME_EXCHANGE`` and with the two-rename fallback."""
    fast = request.param == "exchange"
    real = transaction._exchange
    if fast:
        (tmp_path / "probe-a").mkdir()
        (tmp_path / "probe-b").mkdir()
        if not real(tmp_path / "probe-a", tmp_path / "probe-b"):
            pytest.skip("this file system or kernel has no renameat2(RENAME_EXCHANGE)")
        (tmp_path / "probe-a").rmdir()
        (tmp_path / "probe-b").rmdir()
    calls = []

    def exchange(a, b):
        calls.append(real(a, b) if fast else False)
        return calls[-1]

    monkeypatch.setattr(transaction, "_exchange", exchange)
    yield request.param
    assert calls and all(done == fast for done in calls), "the swap did not take the path under test"


# -- committing -----------------------------------------------------------------------------------
def test_commit_into_a_new_path(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with transaction_for(out) as tx:
        write_output(tx.staging, "new")
        assert not out.exists() and tx.staging.parent == out.parent
        assert hidden_beside(out) == [".out.lock", ".out.partial"]
        assert tx.commit() == out
    assert label_of(out) == "new" and (out / "sub" / "data.txt").is_file()
    assert hidden_beside(out) == []


def test_commit_into_an_empty_directory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    build(out)
    assert label_of(out) == "new" and hidden_beside(out) == []


def test_overwrite_replaces_the_old_output_only_at_commit(tmp_path, swap_kind):
    out = tmp_path / "out"
    old = make_output(out)
    with transaction_for(out, overwrite=True) as tx:
        write_output(tx.staging, "new")
        assert tree_hash(out) == old
        tx.commit()
    assert label_of(out) == "new" and not (out / "sub" / "stale.txt").exists()
    assert hidden_beside(out) == []


def test_the_swap_replaces_every_file(tmp_path, swap_kind):
    out = tmp_path / "out"
    make_output(out)
    (out / "only-in-old.txt").write_text("x")
    build(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [RECORD, "sub"]


# -- failing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("existing", [False, True], ids=["new", "over an old output"])
def test_an_error_before_commit_leaves_the_old_output_and_nothing_beside(tmp_path, existing):
    out = tmp_path / "out"
    old = make_output(out) if existing else None
    with pytest.raises(ValueError, match="computing failed"), transaction_for(out, overwrite=True) as tx:
        write_output(tx.staging, "new")
        raise ValueError("computing failed")
    assert tree_hash(out) == old
    assert hidden_beside(out) == []


def test_ctrl_c_cleans_up_like_an_error(tmp_path):
    out = tmp_path / "out"
    old = make_output(out)
    with pytest.raises(KeyboardInterrupt), transaction_for(out, overwrite=True) as tx:
        write_output(tx.staging, "new")
        raise KeyboardInterrupt
    assert tree_hash(out) == old and hidden_beside(out) == []


def test_leaving_without_commit_is_an_error_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    old = make_output(out)
    with pytest.raises(RuntimeError, match="without commit"), transaction_for(out, overwrite=True) as tx:
        write_output(tx.staging, "new")
    assert tree_hash(out) == old and hidden_beside(out) == []


def test_parents_made_by_a_failed_run_are_removed(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(ValueError), transaction_for(out):
        raise ValueError("no")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    old = make_output(out)
    with pytest.raises(OutputExistsError, match=r"already holds files; pass `overwrite`"):
        build(out)
    assert tree_hash(out) == old and hidden_beside(out) == []


def test_overwrite_refuses_what_is_not_an_output_of_the_kind(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    before = tree_hash(out)
    with pytest.raises(OutputExistsError, match=r"refusing to overwrite .*not an llm2nifti test output"):
        build(out, overwrite=True)
    assert tree_hash(out) == before and hidden_beside(out) == []


def test_a_file_in_place_of_the_output_is_refused(tmp_path):
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(OutputExistsError, match="not a directory"):
        build(out, overwrite=True)
    assert out.read_text() == "a file" and hidden_beside(out) == []


# -- leftovers of killed runs --------------------------------------------------------------------
def kill_inside(out, **kwargs) -> None:
    """A run killed after writing part of its output into the staging directory."""
    with pytest.raises(SimulatedKill), transaction_for(out, **kwargs) as tx:
        transaction.write_text(tx.staging / "run1", "complete run\n")
        raise SimulatedKill


def test_a_killed_run_leaves_its_staging_and_lock_and_the_old_output(tmp_path):
    out = tmp_path / "out"
    old = make_output(out)
    kill_inside(out, overwrite=True)
    assert tree_hash(out) == old
    assert hidden_beside(out) == [".out.lock", ".out.partial"]


def test_a_leftover_staging_directory_is_removed_by_the_next_run(tmp_path, info_log):
    out = tmp_path / "out"
    kill_inside(out)
    build(out)
    assert label_of(out) == "new" and not (out / "run1").exists()
    assert hidden_beside(out) == []
    assert "removing" in info_log.text and ".out.partial" in info_log.text


def worth_keeping(staging) -> bool:
    return (staging / "run1").is_file()


def test_a_resumable_staging_directory_is_kept_and_adopted_with_resume(tmp_path, info_log):
    out = tmp_path / "out"
    with pytest.raises(ValueError), transaction_for(out, resumable=True, worth_keeping=worth_keeping) as tx:
        transaction.write_text(tx.staging / "run1", "complete run\n")
        raise ValueError("the text ran out")
    assert hidden_beside(out) == [".out.partial"]
    assert "kept the interrupted test output" in info_log.text

    with pytest.raises(OutputExistsError, match=r"kept in .*\.out\.partial; finish it with `resume`"):
        build(out, resumable=True, worth_keeping=worth_keeping)
    assert hidden_beside(out) == [".out.partial"]

    with transaction_for(out, resume=True, resumable=True, worth_keeping=worth_keeping) as tx:
        assert tx.adopted and (tx.staging / "run1").read_text() == "complete run\n"
        write_output(tx.staging, "resumed")
        tx.commit()
    assert label_of(out) == "resumed" and (out / "run1").is_file()
    assert hidden_beside(out) == []


def test_a_resumable_staging_directory_is_discarded_with_overwrite(tmp_path):
    out = tmp_path / "out"
    kill_inside(out, resumable=True, worth_keeping=worth_keeping)
    build(out, overwrite=True, resumable=True, worth_keeping=worth_keeping)
    assert not (out / "run1").exists() and hidden_beside(out) == []


def test_a_failed_resumable_run_with_nothing_worth_keeping_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError), transaction_for(out, resumable=True, worth_keeping=worth_keeping):
        raise ValueError("no run finished")
    assert not out.exists() and hidden_beside(out) == []


@pytest.mark.parametrize("resume", [False, True])
def test_a_killed_resumable_staging_with_nothing_to_resume_does_not_block_the_next_run(tmp_path, resume):
    out = tmp_path / "out"
    with pytest.raises(SimulatedKill), transaction_for(out, resumable=True, worth_keeping=worth_keeping) as tx:
        transaction.write_text(tx.staging / "half", "no complete run\n")
        raise SimulatedKill
    with transaction_for(out, resume=resume, resumable=True, worth_keeping=worth_keeping) as tx:
        assert not tx.adopted and not (tx.staging / "half").exists()
        write_output(tx.staging, "new")
        tx.commit()
    assert label_of(out) == "new" and hidden_beside(out) == []


def test_resume_with_nothing_to_resume_is_refused(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputExistsError, match="nothing to resume"):
        build(out, resume=True, resumable=True, worth_keeping=worth_keeping)
    assert not out.exists()
    make_output(out)
    with pytest.raises(OutputExistsError, match=r"nothing to resume in .*: the test output there is complete"):
        build(out, resume=True, resumable=True, worth_keeping=worth_keeping)
    assert label_of(out) == "old" and hidden_beside(out) == []


def test_an_interrupted_swap_with_both_outputs_keeps_the_current_one(tmp_path, info_log):
    out = tmp_path / "out"
    current = make_output(out, "current")
    make_output(tmp_path / ".out.old", "older")
    with pytest.raises(ValueError), transaction_for(out, overwrite=True):
        raise ValueError("the next run fails, after recovering")
    assert tree_hash(out) == current and hidden_beside(out) == []
    assert "interrupted swap" in info_log.text


def test_an_interrupted_swap_without_the_output_is_restored(tmp_path, info_log):
    out = tmp_path / "out"
    old = make_output(tmp_path / ".out.old", "old")
    with pytest.raises(OutputExistsError, match="already holds files"):
        build(out)
    assert tree_hash(out) == old and hidden_beside(out) == []
    assert "restoring" in info_log.text


def finish(out, **kwargs) -> None:
    """What a user does after a kill: resume a staging directory worth keeping, else run again."""
    staging = out.with_name(f".{out.name}.partial")
    if kwargs.get("resumable") and staging.is_dir() and is_test_output(staging):
        with transaction_for(out, resume=True, **kwargs) as tx:
            assert tx.adopted
            tx.commit()
    else:
        build(out, "new", overwrite=True, **kwargs)


@pytest.mark.parametrize("resumable", [False, True], ids=["plain", "resumable"])
def test_a_kill_at_any_step_of_a_swap_leaves_the_old_or_the_new_output(tmp_path, swap_kind, resumable):
    kinds = {"resumable": True, "worth_keeping": is_test_output} if resumable else {}
    old = make_output(tmp_path / "old" / "out", "old")
    new = make_output(tmp_path / "new" / "out", "new")

    def replace(out):
        with transaction_for(out, overwrite=True, **kinds) as tx:
            write_output(tx.staging, "new")
            tx.commit()

    make_output(tmp_path / "count" / "out", "old")
    switch = KillSwitch()
    with installed(switch):
        replace(tmp_path / "count" / "out")
    for k in range(1, switch.count + 1):
        out = tmp_path / f"k{k}" / "out"
        make_output(out, "old")
        with installed(KillSwitch(k)), pytest.raises(SimulatedKill):
            replace(out)
        moved_aside = not out.exists() and tree_hash(out.with_name(".out.old")) == old  # restored by the next run
        assert tree_hash(out) in (old, new) or moved_aside, f"a kill at operation {k} left {out} half-swapped"
        finish(out, **kinds)
        assert tree_hash(out) == new, f"after a kill at operation {k}, recovery did not give the new output"
        assert hidden_beside(out) == []


# -- the lock ---------------------------------------------------------------------------------------
def test_the_lock_file_names_its_holder_and_goes_away_after(tmp_path):
    target = tmp_path / "out"
    with OutputLock(target) as lock:
        holder = json.loads(lock.path.read_text())
        assert lock.path.name == ".out.lock"
        assert holder["host"] == socket.gethostname() and isinstance(holder["pid"], int)
        assert holder["started"]
    assert not lock.path.exists()


def test_a_live_holder_makes_a_second_writer_fail_at_once(tmp_path):
    target = tmp_path / "out"
    with lock_holder(target) as process:
        holder = json.loads((tmp_path / ".out.lock").read_text())
        assert holder["pid"] == process.pid
        started = time.monotonic()
        with pytest.raises(OutputLockedError) as caught:
            OutputLock(target).acquire()
        assert time.monotonic() - started < 2
        message = str(caught.value)
        assert "\n" not in message
        for part in (str(process.pid), socket.gethostname(), holder["started"], str(target)):
            assert part in message
        assert json.loads((tmp_path / ".out.lock").read_text()) == holder  # the holder's file is untouched


def test_a_holder_is_named_even_before_it_has_written_its_name(tmp_path):
    """Between its ``flock`` and writing the file, a new holder is waited for (briefly), not called ``?``."""
    import fcntl

    target = tmp_path / "out"
    fd = os.open(tmp_path / ".out.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: conflicts even within this process
    holder = {"pid": 4242, "host": "elsewhere", "started": "2024-01-01T00:00:00+0000"}
    writer = threading.Timer(0.2, lambda: os.write(fd, json.dumps(holder).encode()))
    writer.start()
    try:
        with pytest.raises(OutputLockedError, match=r"process 4242 on elsewhere, started 2024-01-01T00:00:00\+0000"):
            OutputLock(target).acquire()
    finally:
        writer.join()
        os.close(fd)


def test_a_live_holder_refuses_a_transaction_and_leaves_the_output(tmp_path):
    out = tmp_path / "out"
    old = make_output(out)
    with lock_holder(out) as process:
        with pytest.raises(OutputLockedError, match=f"process {process.pid}"):
            build(out, overwrite=True)
        assert tree_hash(out) == old
        assert hidden_beside(out) == [".out.lock"]  # the holder's, untouched; no staging directory


def test_a_stale_lock_of_a_killed_process_is_taken_over(tmp_path, info_log):
    target = tmp_path / "out"
    with lock_holder(target) as process:
        sigkill(process)
    stale = json.loads((tmp_path / ".out.lock").read_text())
    assert stale["pid"] == process.pid
    with OutputLock(target) as lock:
        assert lock.took_over == stale
    assert f"took over the lock of {target} from process {process.pid}" in info_log.text
    assert hidden_beside(target) == []


def test_a_transaction_takes_over_a_stale_lock(tmp_path):
    out = tmp_path / "out"
    make_output(out)
    with lock_holder(out) as process:
        sigkill(process)
    tx = build(out, overwrite=True)
    assert tx.lock.took_over["pid"] == process.pid
    assert label_of(out) == "new" and hidden_beside(out) == []


# -- files ------------------------------------------------------------------------------------------
def test_json_is_strict(tmp_path):
    with pytest.raises(ValueError):
        transaction.write_json(tmp_path / "x.json", {"value": math.nan})
    assert list(tmp_path.iterdir()) == []
    assert transaction.finite_or_none(math.inf) is None and transaction.finite_or_none(2) == 2.0


def test_an_atomic_file_appears_only_complete(tmp_path):
    target = tmp_path / "f.txt"
    with pytest.raises(ValueError), transaction.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise ValueError("no")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SimulatedKill), transaction.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise SimulatedKill
    assert not target.exists() and [p.name for p in tmp_path.iterdir()] == [".f.txt.part"]
    assert transaction.remove_partials(tmp_path) == 1 and list(tmp_path.iterdir()) == []
