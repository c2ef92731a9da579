"""Faults during training and saving: signals, kill -9, NaN, out of memory, full disks.

Each test compares what survives with an uninterrupted run of the same config."""
import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import write_config, write_jsonl
from tunesmith.cli import main

ROWS = [{"prompt": f"Q: what is {i} plus {i}?\nA: ", "response": f"{2 * i}"} for i in range(16)]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def setup(tmp_path: Path, base_model: Path, **training) -> Path:
    write_jsonl(tmp_path / "rows.jsonl", ROWS)
    return write_config(tmp_path / "cfg.yaml", {
        "name": "faults", "base_model": str(base_model), "output_dir": "out",
        "data": {"train": {"data_files": "rows.jsonl"}, "max_length": 64},
        "training": {"max_steps": 12, "learning_rate": 3e-3, "per_device_train_batch_size": 2, "logging_steps": 1,
                     "save_steps": 4, "save_total_limit": 10, "bf16": False, **training}})


def losses(out: Path) -> dict[int, float]:
    """step -> loss; a resumed run's records replace the ones it repeats."""
    return {r["step"]: r["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if "loss" in (r := json.loads(line))}


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "model.safetensors")


def assert_same_run(a: Path, b: Path) -> None:
    la, lb = losses(a), losses(b)
    assert sorted(la) == sorted(lb)
    assert max(abs(la[s] - lb[s]) for s in la) < 1e-5
    wa, wb = final_weights(a), final_weights(b)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_llama) -> Path:
    cfg = setup(tmp_path_factory.mktemp("straight"), tiny_llama)
    assert main(["run", str(cfg)]) == 0
    return cfg.parent / "out"


def start_training(cfg: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "train", str(cfg), *overrides], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and max(losses(out) or {0: 0}) >= step:
            return
        time.sleep(0.02)
    raise AssertionError(f"training never reached step {step}")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_equals_uninterrupted(tmp_path, tiny_llama):
    cfg = setup(tmp_path, tiny_llama, lr_scheduler_type="constant")  # max_steps then does not change any step
    assert main(["prep", str(cfg)]) == 0
    out = tmp_path / "out"
    proc = start_training(cfg, "training.max_steps=100000")  # the signal always lands mid-training
    wait_for_step(out, 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    stopped = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
    ckpt = out / "checkpoints" / f"checkpoint-{stopped}"
    assert f"checkpoint saved in {ckpt}" in err and (ckpt / "trainer_state.json").is_file()
    assert not (out / "final").exists() and "Traceback" not in err

    steps = f"training.max_steps={stopped + 4}"
    assert main(["train", str(cfg), "model.resume=auto", steps]) == 0
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == str(ckpt)
    straight = setup(tmp_path / "straight", tiny_llama, lr_scheduler_type="constant")
    assert main(["run", str(straight), steps]) == 0
    assert_same_run(out, straight.parent / "out")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_mid_training_then_resume_equals_uninterrupted(tmp_path, tiny_llama, uninterrupted, seed):
    cfg = setup(tmp_path, tiny_llama)
    assert main(["prep", str(cfg)]) == 0
    out = tmp_path / "out"
    rng = random.Random(seed)
    kill_after = rng.randint(1, 8)  # checkpoints every 4 steps; some kills land mid-save
    proc = start_training(cfg)
    wait_for_step(out, kill_after, proc)
    time.sleep(rng.uniform(0, 0.05))
    proc.kill()
    proc.communicate()
    assert main(["train", str(cfg), "model.resume=auto"]) == 0
    assert_same_run(out, uninterrupted)


def test_kill_9_mid_checkpoint_save_then_resume_equals_uninterrupted(tmp_path, tiny_llama, uninterrupted):
    """What a kill while checkpoint-8 is being written leaves: its weights, no completion marker
    (written last), nothing later. Resume skips it, retrains over it, and ends equal."""
    import shutil

    cfg = setup(tmp_path, tiny_llama)
    assert main(["run", str(cfg)]) == 0
    out = tmp_path / "out"
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoints" / "checkpoint-12")
    from tunesmith.train.checkpoints import MARKER

    (out / "checkpoints" / "checkpoint-8" / MARKER).unlink()
    (out / "checkpoints" / "checkpoint-8" / "trainer_state.json").unlink()
    (out / "checkpoints" / "checkpoint-8" / "optimizer.pt").write_bytes(b"cut sh")
    assert main(["train", str(cfg), "model.resume=auto"]) == 0
    assert json.loads((out / "summary.json").read_text())["resumed_from"].endswith("checkpoint-4")
    assert_same_run(out, uninterrupted)


def test_kill_9_during_the_final_save_then_resume_equals_uninterrupted(tmp_path, tiny_llama, uninterrupted):
    import shutil

    cfg = setup(tmp_path, tiny_llama)
    assert main(["run", str(cfg)]) == 0
    shutil.rmtree(tmp_path / "out" / "final")  # what a kill after checkpoint-12, before final/ is renamed in, leaves
    assert main(["train", str(cfg), "model.resume=auto"]) == 0
    assert_same_run(tmp_path / "out", uninterrupted)


def inject_nan_at(monkeypatch, step: int) -> None:
    from tunesmith.train.trainer import TunesmithTrainer

    original = TunesmithTrainer.compute_loss

    def compute_loss(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        if self.state.global_step + 1 == step:
            loss = (loss[0] * float("nan"), *loss[1:]) if isinstance(loss, tuple) else loss * float("nan")
        return loss

    monkeypatch.setattr(TunesmithTrainer, "compute_loss", compute_loss)


def test_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path, tiny_llama, monkeypatch, capsys):
    cfg = setup(tmp_path, tiny_llama)
    inject_nan_at(monkeypatch, 7)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert main(["run", str(cfg)]) == 2
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # Ctrl-C works again
    err = capsys.readouterr().err
    ckpt = tmp_path / "out" / "checkpoints" / "checkpoint-4"
    assert f"step 7: the loss or the gradients are not finite (NaN or inf); last good checkpoint: {ckpt}" in err
    assert "model.nonfinite: skip" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "final").exists()


def test_nan_steps_can_be_skipped_and_are_counted(tmp_path, tiny_llama, monkeypatch, capsys):
    cfg = setup(tmp_path, tiny_llama, max_steps=8)
    inject_nan_at(monkeypatch, 3)
    assert main(["run", str(cfg), "model.nonfinite=skip"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["nonfinite_steps_skipped"] == [3] and summary["steps"] == 8
    assert "skipped 1 step(s) with a non-finite loss or gradient: [3]" in capsys.readouterr().err
    assert all(torch.isfinite(w).all() for w in final_weights(tmp_path / "out").values())  # the NaN never reached the weights


def test_out_of_memory_names_the_knobs_for_this_run(tmp_path, tiny_llama, monkeypatch, capsys):
    from tunesmith.train.trainer import TunesmithTrainer

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(TunesmithTrainer, "compute_loss", oom)
    assert main(["run", str(setup(tmp_path, tiny_llama))]) == 2
    err = capsys.readouterr().err
    assert "out of GPU memory while training" in err and "Traceback" not in err, err[-1500:]
    for knob in ("per_device_train_batch_size: 2", "data.max_length: 64", "activation_checkpointing: true", "model.method: lora"):
        assert knob in err, knob
    # transformers 5's name for it: already on, so not offered again
    assert main(["run", str(setup(tmp_path, tiny_llama, activation_checkpointing=True))]) == 2
    err = capsys.readouterr().err
    assert "out of GPU memory while training" in err and "checkpointing" not in err, err[-1500:]


def fail_after_partial_write(monkeypatch, owner, method: str, on_call: int = 1) -> None:
    """`owner.method` writes a little, then fails with a full disk on its `on_call`-th call."""
    original = getattr(owner, method)
    calls = {"n": 0}

    def failing(self, target, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] < on_call:
            return original(self, target, *args, **kwargs)
        Path(target).mkdir(parents=True, exist_ok=True)
        (Path(target) / "partial.bin").write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(owner, method, failing)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_disk_full_while_saving_prepared_data_keeps_the_previous_data(tmp_path, tiny_llama, monkeypatch, capsys):
    from datasets import DatasetDict

    cfg = setup(tmp_path, tiny_llama)
    assert main(["prep", str(cfg)]) == 0
    data = tmp_path / "out" / "data"
    before = tree(data)
    fail_after_partial_write(monkeypatch, DatasetDict, "save_to_disk")
    assert main(["prep", str(cfg), "data.max_length=32"]) == 2
    err = capsys.readouterr().err
    assert f"could not write the prepared data to {data}: No space left on device" in err
    assert tree(data) == before
    assert sorted(p.name for p in data.parent.iterdir()) == ["data"]  # no partial folder left beside it


def test_disk_full_while_saving_a_checkpoint_keeps_earlier_checkpoints(tmp_path, tiny_llama, monkeypatch, capsys):
    from transformers import PreTrainedModel

    cfg = setup(tmp_path, tiny_llama)
    fail_after_partial_write(monkeypatch, PreTrainedModel, "save_pretrained", on_call=2)  # the 2nd save: checkpoint-8
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    ckpts = tmp_path / "out" / "checkpoints"
    assert "No space left on device" in err and f"removed the partial {ckpts / 'checkpoint-8'}" in err
    assert [p.name for p in ckpts.iterdir()] == ["checkpoint-4"] and (ckpts / "checkpoint-4" / "trainer_state.json").is_file()
    monkeypatch.undo()  # space again
    assert main(["train", str(cfg), "model.resume=auto"]) == 0  # and the run continues from it


def test_disk_full_while_saving_final_keeps_the_previous_final(tmp_path, tiny_llama, monkeypatch, capsys):
    from transformers import PreTrainedModel

    cfg = setup(tmp_path, tiny_llama, max_steps=2, save_steps=1000)
    assert main(["run", str(cfg)]) == 0
    final = tmp_path / "out" / "final"
    before = tree(final)
    fail_after_partial_write(monkeypatch, PreTrainedModel, "save_pretrained", on_call=2)  # 1: the last checkpoint
    assert main(["train", str(cfg), "training.max_steps=3"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "removed the partial" in err and ".final.tmp" in err, err[-1500:]
    assert tree(final) == before and not (tmp_path / "out" / ".final.tmp").exists()


def prepared(out: Path) -> tuple[dict, dict]:
    from datasets import load_from_disk

    data = load_from_disk(str(out / "data"))
    report = json.loads((out / "data" / "prep_report.json").read_text())
    for timing in ("seconds", "tokens_per_second", "output"):
        report.pop(timing)
    return {name: split.to_dict() for name, split in data.items()}, report


@pytest.mark.slow
def test_kill_9_during_prep_then_rerun_equals_uninterrupted(tmp_path, tok_dir):
    rows = [{"prompt": f"Q: what is {i} plus {i}?\nA: ", "response": f"{2 * i} " * (i % 7 + 1)} for i in range(3000)]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = write_config(tmp_path / "cfg.yaml", {"base_model": str(tok_dir), "output_dir": "out",
                                               "data": {"train": {"data_files": "rows.jsonl"}, "max_length": 64,
                                                        "validation_split": 0.1, "packing": True, "export": ["jsonl"]}})
    command = [sys.executable, "-m", "tunesmith.cli", "prep", str(cfg)]
    start = time.perf_counter()
    subprocess.run(command, env=ENV, check=True, capture_output=True)
    took = time.perf_counter() - start
    straight = prepared(tmp_path / "out")
    rng = random.Random(13)
    for moment in sorted(rng.uniform(0.3, 1.0) * took for _ in range(3)):  # imports take the first part
        proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(moment)
        proc.kill()
        proc.wait()
        assert prepared(tmp_path / "out") == straight  # the previous complete output is untouched
        assert main(["prep", str(cfg)]) == 0
        assert prepared(tmp_path / "out") == straight
        assert not list((tmp_path / "out").glob(".data.*"))  # the killed run's half-written folder is gone


def test_a_killed_writers_leftovers_are_removed_by_the_next_write(tmp_path):
    from tunesmith.data.write import remove_leftovers

    finished = subprocess.Popen([sys.executable, "-c", ""])
    finished.wait()  # a pid no process has now
    out, host = tmp_path / "data", socket.gethostname()
    out.mkdir()
    stale = tmp_path / f".data.tmp-{host}-{finished.pid}"
    running = tmp_path / f".data.tmp-{host}-{os.getpid()}"  # a writer still at work
    elsewhere = tmp_path / f".data.tmp-otherhost-{finished.pid}"  # a shared folder: can't tell, left alone
    for folder in (stale, running, elsewhere):
        folder.mkdir()
        (folder / "part").write_text("half")
    remove_leftovers(out)
    assert not stale.exists() and running.exists() and elsewhere.exists()


def test_a_failed_upload_is_one_message_and_the_run_is_kept(tmp_path):
    from tunesmith.errors import OutputError
    from tunesmith.train.artifacts import upload

    out = tmp_path / "out"
    (out / "final").mkdir(parents=True)
    (out / "final" / "model.safetensors").write_bytes(b"weights")
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the upload wants a folder")
    with pytest.raises(OutputError) as failed:
        upload(out, [f"file://{blocker}/run"])
    assert "model.upload_to" in str(failed.value) and f"complete in {out}" in str(failed.value)
    assert (out / "final" / "model.safetensors").read_bytes() == b"weights"


def test_optimizer_settings_the_trainer_refuses_are_named(tmp_path, tiny_llama, capsys):
    """Found by tests/test_cli_property.py: optim_args the Trainer cannot parse ended in a traceback."""
    from helpers import write_config, write_jsonl
    from tunesmith.cli import main

    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "response": "b"}])
    cfg = write_config(tmp_path / "c.yaml", {"base_model": str(tiny_llama), "output_dir": str(tmp_path / "out"),
                                            "data": {"train": {"data_files": "t.jsonl"}, "max_length": 64},
                                            "training": {"max_steps": 1, "optim_args": "0", "report_to": "none"}})
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "the Trainer refused the training settings while building the optimizer and schedule: ValueError" in err
    assert "training.optim_args" in err and "Traceback" not in err


def test_data_loader_settings_the_trainer_refuses_are_named(tmp_path, tiny_llama, capsys):
    """Found by tests/test_cli_property.py: a multiprocessing start method with no worker processes
    (DataLoader's ValueError while the Trainer builds it) ended in a traceback."""
    from helpers import write_config, write_jsonl
    from tunesmith.cli import main

    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "response": "b"}])
    cfg = write_config(tmp_path / "c.yaml", {"base_model": str(tiny_llama), "output_dir": str(tmp_path / "out"),
                                            "data": {"train": {"data_files": "t.jsonl"}, "max_length": 64},
                                            "training": {"max_steps": 1, "dataloader_multiprocessing_context": "",
                                                         "report_to": "none"}})
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "the Trainer refused the training settings while building the data loaders: ValueError" in err
    assert "training.dataloader_multiprocessing_context" in err and "Traceback" not in err
