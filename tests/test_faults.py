"""Faults provoked for real: a full file system, damaged files, folders that may not be written, signals.

Each test checks the one line the user sees (what was being done, the file, the cause, what is kept and
the next step), the documented exit status (engine.errors), that no traceback is shown and that nothing
already on disk changed. docs/robustness.md#faults-the-command-line-reports lists them.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine import cli, errors, runs

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534


# ----------------------------------------------------------------------------- helpers


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (what "nothing on disk changed" compares)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def one_error_line(stderr: str, status: int, code: int, *words: str) -> str:
    """The last line of ``stderr``: the error line, with every one of ``words``; no traceback above it."""
    assert code == status, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(("error: ", "interrupted: ")), line
    for word in words:
        assert word in line, (word, line)
    return line


def engine(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"ended before the moment came: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "the moment never came"
        time.sleep(0.02)


@pytest.fixture
def run_copy(trained_tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny trained run (its checkpoints have sha256 sidecars)."""
    return Path(shutil.copytree(trained_tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("cams")))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``make(mb)``: a tmpfs of that size, really full when filled; skipped where mounting is impossible."""
    mounted: list[Path] = []

    def make(mb: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"no small file system to fill: mounting a tmpfs needs root ({done.stderr.strip()})")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill(folder: Path) -> Path:
    """Fill ``folder``'s file system to the last byte, as another program would."""
    filler = folder / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 2**20)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def as_unprivileged(main: Callable[[], int], capture: Path) -> int:
    """``main()`` in a forked child that may not write what the test protected; its stderr into ``capture``.

    As root, the child becomes ``nobody`` (setgid/setuid), since root may write anywhere; otherwise it runs
    as the user, whom the folder's mode already refuses. Forked, not executed: the interpreter and modules
    are already in memory, where ``nobody`` may not be able to read them.
    """
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            fd = os.open(capture, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            os.dup2(fd, 2)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            code = main()
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def read_only(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    probe = folder / ".probe"
    if os.geteuid() != 0:
        try:
            probe.touch()
        except PermissionError:
            return
        probe.unlink()
        pytest.skip("this file system lets the user write a read-only folder")


# ----------------------------------------------------------------------------- the words


def test_operating_system_errors_in_words_and_statuses() -> None:
    assert errors.describe_oserror(OSError(errno.ENOSPC, "x")) == "the disk is full"
    assert errors.describe_oserror(OSError(errno.EACCES, "x")) == "permission denied"
    assert errors.describe_oserror(OSError(errno.EROFS, "x")) == "the file system is read-only"
    line, status = errors.format_error(OSError(errno.ENOSPC, "No space left on device", "/o/x.pt"), "training")
    assert (line, status) == ("error: training: /o/x.pt: the disk is full; free space and run the command again", 4)
    assert errors.format_error(FileNotFoundError(errno.ENOENT, "gone", "/x"), "evaluating")[1] == 2
    assert errors.format_error(errors.DamagedFileError("/r/m.json", "damaged"), "x")[1] == 3
    assert errors.format_error(errors.Interrupted(signal.SIGTERM), "training")[1] == 143
    assert errors.format_error(RuntimeError("a bug"), "x") is None  # a bug keeps its traceback


# ----------------------------------------------------------------------------- damaged files


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":  # the right size: only the checksum can tell
        path.write_bytes(os.urandom(len(data)))
    elif how == "one byte":
        path.write_bytes(data[:5000] + bytes([data[5000] ^ 0xFF]) + data[5001:])


@pytest.mark.parametrize("how", ["truncated", "garbage", "one byte"])
def test_a_damaged_checkpoint_is_named_by_evaluate(run_copy: Path, how: str, capsys) -> None:
    _damage(run_copy / "checkpoints" / "best.pt", how)
    before = snapshot(run_copy)
    code = cli.main(["evaluate", str(run_copy)])
    one_error_line(capsys.readouterr().err, 3, code, f"evaluating: {run_copy}/checkpoints/best.pt",
                   "the checkpoint is damaged: truncated or not a checkpoint", "--checkpoint last")
    assert snapshot(run_copy) == before


def test_a_damaged_checkpoint_without_sidecar_is_caught_by_loading(run_copy: Path, capsys) -> None:
    checkpoint = run_copy / "checkpoints" / "best.pt"
    runs.checksum_file(checkpoint).unlink()
    _damage(checkpoint, "garbage")
    before = snapshot(run_copy)
    code = cli.main(["explain", str(run_copy), "--no-faithfulness", "--no-sanity", "--multilayer", "0"])
    one_error_line(capsys.readouterr().err, 3, code, f"{checkpoint}", "the checkpoint is damaged")
    code = cli.main(["predict", str(run_copy), str(REPO / "README.md")])
    one_error_line(capsys.readouterr().err, 3, code, f"predicting: {checkpoint}", "the checkpoint is damaged")
    assert snapshot(run_copy) == before


def test_a_run_without_sidecars_still_loads(run_copy: Path, prepared_tiny: Path, capsys) -> None:
    for sidecar in (run_copy / "checkpoints").glob("*.sha256"):
        sidecar.unlink()
    image = next((prepared_tiny / "samples" / "benign").glob("*.png"))
    assert cli.main(["predict", str(run_copy), str(image)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["pred"] in runs.CLASSES


def test_a_damaged_checksum_file_is_named(run_copy: Path, capsys) -> None:
    sidecar = run_copy / "checkpoints" / "best.pt.sha256"
    sidecar.write_text("not a digest\n")
    code = cli.main(["predict", str(run_copy), str(REPO / "README.md")])
    one_error_line(capsys.readouterr().err, 3, code, str(sidecar), "the checksum file is damaged", "delete it")


def test_resume_names_a_damaged_last_checkpoint_and_history(run_copy: Path, trained_tiny_run: Path,
                                                            capsys) -> None:
    (run_copy / runs.COMPLETE).unlink()
    last = run_copy / "checkpoints" / "last.pt"
    _damage(last, "garbage")
    before = snapshot(run_copy)
    code = cli.main(["train", "--resume", str(run_copy)])
    one_error_line(capsys.readouterr().err, 3, code, str(last), "the checkpoint is damaged", "train a new run")
    assert snapshot(run_copy) == before
    shutil.copy(trained_tiny_run / "checkpoints" / "last.pt", last)  # a valid checkpoint again
    runs.checksum_file(last).unlink()
    (run_copy / runs.HISTORY).write_text("epoch,train_loss\n1,not a number\n")
    before = snapshot(run_copy)
    code = cli.main(["train", "--resume", str(run_copy)])
    one_error_line(capsys.readouterr().err, 3, code, f"{run_copy}/history.csv", "damaged")
    assert snapshot(run_copy) == before


def test_damaged_json_and_manifest_are_named(run_copy: Path, prepared_tiny: Path, tmp_path: Path, capsys) -> None:
    (run_copy / runs.CONFIG).write_bytes(b"\x00\xff garbage")
    code = cli.main(["train", "--resume", str(run_copy)])
    one_error_line(capsys.readouterr().err, 3, code, f"{run_copy}/config.json", "not valid JSON")
    (run_copy / runs.CONTEXT).write_text('{"truncated": ')
    code = cli.main(["evidence", str(run_copy)])
    one_error_line(capsys.readouterr().err, 3, code, f"{run_copy}/context.json", "evaluate")
    prepared = Path(shutil.copytree(prepared_tiny, tmp_path / "prepared", ignore=shutil.ignore_patterns("cache")))
    (prepared / "manifest.csv").write_bytes(os.urandom(4096))
    code = cli.main(["train", "--data", str(prepared), "--preset", "tiny", "--out", str(tmp_path / "runs")])
    one_error_line(capsys.readouterr().err, 3, code, f"{prepared}/manifest.csv", "prepare")


def test_a_damaged_decoded_cache_is_named_and_rebuilt(prepared_tiny: Path, tmp_path: Path, caplog) -> None:
    from engine.cache import load_cache
    from engine.runs import CACHE

    prepared = Path(shutil.copytree(prepared_tiny, tmp_path / "prepared", ignore=shutil.ignore_patterns("cache")))
    good = load_cache(prepared, 32).copy()
    cache = next((prepared / CACHE).glob("32px.*.npy"))
    cache.write_bytes(os.urandom(cache.stat().st_size))
    assert (load_cache(prepared, 32) == good).all()
    assert f"{cache} is damaged" in caplog.text


def test_damaged_sweep_state_is_named_and_kept(tmp_path: Path, capsys) -> None:
    from tuning.cli import main

    sweep = tmp_path / "sweeps" / "s"
    sweep.mkdir(parents=True)
    (sweep / "summary.csv").write_bytes(b"\x89PNG garbage\x00\x01,\n")
    before = snapshot(sweep)
    code = main(["finish", str(sweep)])
    one_error_line(capsys.readouterr().err, 3, code, f"finishing the sweep: {sweep}/summary.csv", "damaged",
                   "trials/ are untouched")
    assert snapshot(sweep) == before
    (sweep / "sweep.json").write_text('{"name": "s", "status": ')
    code = main(["sweep", "--space", "tiny", "--out", str(sweep.parent), "--name", "s", "--resume"])
    one_error_line(capsys.readouterr().err, 3, code, f"{sweep}/sweep.json", "not valid JSON")
    assert snapshot(sweep) == {**before, "sweep.json": hashlib.sha256(b'{"name": "s", "status": ').hexdigest()}


def test_the_dashboard_warns_on_the_damaged_run_only(run_copy: Path, trained_tiny_run: Path) -> None:
    from dashboard import loaders
    from engine.predict import Predictor

    root = run_copy.parent
    (run_copy / runs.METRICS).write_text("{ not json")
    with pytest.raises(loaders.LoadError, match=r"metrics\.json"):
        loaders.metrics(root, run_copy)
    _damage(run_copy / "checkpoints" / "best.pt", "garbage")
    # The Predict page shows a ValueError's text as the warning on that run.
    with pytest.raises(ValueError, match=r"best\.pt: the checkpoint is damaged"):
        Predictor(run_copy, "best", "cpu")  # as the page loads it
    assert Predictor(trained_tiny_run, "best", "cpu").cfg.image_size == 64  # another run stays usable


def test_the_deck_names_each_damaged_file_and_is_still_made(dashboard_outputs: dict[str, Path],
                                                            tmp_path: Path) -> None:
    from dashboard import loaders, report

    root = Path(shutil.copytree(dashboard_outputs["root"], tmp_path / "outputs", symlinks=True))
    run = root / dashboard_outputs["best"].relative_to(dashboard_outputs["root"])
    (run / runs.CONTEXT).write_text('{"splits": ')
    mean_map = next((run / runs.CAMS).rglob(runs.STAGE_MEAN_MAP))
    mean_map.write_bytes(b"\x89PNG not an image")
    overlays = sorted((run / runs.CAMS / "gradcam").rglob("*.png"))
    for overlay in overlays:  # every Grad-CAM map of the grids
        overlay.write_bytes(overlay.read_bytes()[:40])
    deck = report.build(root, report.Findings(run=str(run)))
    assert deck.slides and deck.pptx[:2] == b"PK"  # made: the other slides do not depend on these files
    said = "\n".join(deck.warnings)
    assert f"{run.relative_to(root)}/{runs.CONTEXT}" in said, said
    assert f"{mean_map.relative_to(root)} not shown: damaged" in said, said
    assert overlays and f"{run.relative_to(root)}/{runs.CAMS}/gradcam/" in said, said
    (run / runs.METRICS).write_text("{ not json")  # nothing to show without the metrics: refused, by name
    with pytest.raises(loaders.LoadError, match=r"metrics\.json"):
        report.build(root, report.Findings(run=str(run)))


# ----------------------------------------------------------------------------- a full disk


def test_train_refuses_a_disk_without_room_before_the_first_epoch(prepared_tiny: Path, small_disk,
                                                                  capsys) -> None:
    disk = small_disk(8)
    code = cli.main(["train", "--data", str(prepared_tiny), "--preset", "tiny", "--out", str(disk),
                     "--name", "r"])
    one_error_line(capsys.readouterr().err, 4, code, f"training {disk}/r", "the disk is nearly full",
                   "MB needed (the checkpoints", "nothing was written")
    assert not (disk / "r" / runs.CONFIG).exists()


def test_explain_and_sweep_refuse_a_disk_without_room(run_copy: Path, prepared_tiny: Path, small_disk,
                                                      capsys) -> None:
    from tuning.cli import main

    disk = small_disk(8)
    run = Path(shutil.copytree(run_copy, disk / "run"))
    before = snapshot(run)
    code = cli.main(["explain", str(run), "--no-faithfulness", "--no-sanity", "--multilayer", "0"])
    one_error_line(capsys.readouterr().err, 4, code, f"explaining {run}", "the disk is nearly full", "maps of")
    assert snapshot(run) == before and not list(run.glob(".cams-*"))
    code = main(["sweep", "--space", "tiny", "--data", str(prepared_tiny), "--out", str(disk / "sweeps"),
                 "--name", "s", "--num-samples", "2"])
    one_error_line(capsys.readouterr().err, 4, code, f"sweeping into {disk}/sweeps/s", "the disk is nearly full",
                   "checkpoints of 2 trials")
    assert not (disk / "sweeps" / "s").exists()


def test_a_disk_that_fills_during_training_keeps_the_last_checkpoint(prepared_tiny: Path, small_disk) -> None:
    disk = small_disk(40)  # room enough to start: the disk is filled by "another program" after epoch 1
    run = disk / "r"
    proc = engine(["engine", "train", "--data", str(prepared_tiny), "--preset", "tiny", "--out", str(disk),
                   "--name", "r", "--set", "epochs=300"])
    try:
        wait_for(lambda: runs.checksum_file(run / "checkpoints" / "last.pt").is_file(), proc)
        fill(disk)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    line = one_error_line(stderr, 4, proc.returncode, f"training {run}: {run}/", "the disk is full",
                          "is intact: free space and run `python -m engine train --resume")
    epoch = int(line.split("the last checkpoint, epoch ")[1].split(",")[0])
    from engine.inference import read_checkpoint_file

    assert read_checkpoint_file(run / "checkpoints" / "last.pt")["epoch"] == epoch  # verified by its sha256
    assert not list((run / "checkpoints").glob(".*.tmp"))


def test_a_disk_that_fills_while_explaining_keeps_the_previous_maps(trained_tiny_run: Path, small_disk) -> None:
    disk = small_disk(60)
    run = Path(shutil.copytree(trained_tiny_run, disk / "run", ignore=shutil.ignore_patterns("cams")))
    (run / runs.CAMS).mkdir()
    (run / runs.CAMS / runs.CAMS_META).write_text('{"previous": true}\n')
    before = snapshot(run)
    proc = engine(["engine", "explain", str(run), "--no-sanity", "--multilayer", "0"])
    try:
        wait_for(lambda: any(p.is_dir() for p in run.glob(".cams-*")), proc)
        filler = fill(disk)  # "another program" takes the rest of the disk while the new maps are written
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    one_error_line(stderr, 4, proc.returncode, f"error: explaining {run}: {run}/", "the disk is full",
                   "the previous cams/ (if any) and the rest of the run are untouched",
                   f"free space and run `python -m engine explain {run}` again")
    filler.unlink()
    assert snapshot(run) == before and not list(run.glob(".cams-*"))


def test_a_disk_that_fills_while_preparing_keeps_the_prepared_folder(prepared_tiny: Path, small_disk) -> None:
    disk = small_disk(20)
    out = Path(shutil.copytree(prepared_tiny, disk / "prepared", ignore=shutil.ignore_patterns("cache")))
    before = snapshot(out)
    proc = engine(["engine", "prepare", "--data-dir", str(prepared_tiny.parent / "raw"), "--out", str(out),
                   "--seed", "7"])
    try:
        wait_for(lambda: bool(_children(proc.pid)), proc)  # its decoding workers are running
        filler = fill(disk)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    one_error_line(stderr, 4, proc.returncode, f"error: preparing {out}: {out}/", "the disk is full",
                   f"{out} holds a complete manifest and report, the previous ones or the new ones: "
                   "free space and run the command again")
    filler.unlink()
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- folders that may not be written


def test_read_only_output_folders_are_refused_in_one_line(trained_tiny_run: Path, prepared_tiny: Path) -> None:
    from tuning.cli import main as tuning_main

    # Loaded before the child drops its rights to read them.
    for module in ("engine.commands.explain", "engine.commands.train", "tuning.sweep", "pytorch_grad_cam"):
        importlib.import_module(module)
    base = Path(tempfile.mkdtemp(prefix="faults-"))  # pytest's own folders are closed to other users
    try:
        base.chmod(0o755)
        locked = base / "locked"
        read_only(locked)
        run = Path(shutil.copytree(trained_tiny_run, base / "run", ignore=shutil.ignore_patterns("cams")))
        run.chmod(0o555)
        before = snapshot(run)
        capture = base / "stderr"
        code = as_unprivileged(lambda: cli.main(["train", "--data", str(prepared_tiny), "--preset", "tiny",
                                                  "--out", str(locked), "--name", "r"]), capture)
        one_error_line(capture.read_text(), 4, code, f"training {locked}/r: {locked}: permission denied",
                       "nothing was written")
        code = as_unprivileged(lambda: cli.main(["explain", str(run)]), capture)
        one_error_line(capture.read_text(), 4, code, f"explaining {run}: {run}: permission denied")
        code = as_unprivileged(lambda: tuning_main(["sweep", "--space", "tiny", "--data", str(prepared_tiny),
                                                    "--out", str(locked / "sweeps"), "--name", "s"]), capture)
        one_error_line(capture.read_text(), 4, code, f"sweeping into {locked}/sweeps/s", "permission denied")
        run.chmod(0o755)
        assert snapshot(run) == before and not list(locked.iterdir())
    finally:
        for folder in (base / "locked", base / "run"):
            if folder.exists():
                folder.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------------------- signals


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def test_prepare_stopped_while_decoding_keeps_the_prepared_folder(prepared_tiny: Path, tmp_path: Path) -> None:
    out = Path(shutil.copytree(prepared_tiny, tmp_path / "prepared", ignore=shutil.ignore_patterns("cache")))
    before = snapshot(out)
    # Another seed: a prepare that finished would change the manifest.
    proc = engine(["engine", "prepare", "--data-dir", str(prepared_tiny.parent / "raw"), "--out", str(out),
                   "--seed", "7"])
    try:
        wait_for(lambda: bool(_children(proc.pid)), proc)  # its decoding workers are running
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    one_error_line(stderr, 143, proc.returncode, f"interrupted: preparing {out} was stopped by SIGTERM",
                   "holds a complete manifest and report, the previous ones or the new ones", "run the command again")
    after = snapshot(out)
    if after != before:
        # The signal landed where Python swallows the exception (an at-fork callback of the decoding workers)
        # and the prepare ran on to its end: then the new manifest and report are there, complete and matching.
        report = json.loads((out / "data_report.json").read_text())
        assert report["seed"] == 7, report.get("seed")
        assert len((out / "manifest.csv").read_text().splitlines()) == report["images"] + 1


def test_a_signal_landing_where_python_cannot_raise_still_stops_quietly(monkeypatch) -> None:
    ignored: list[BaseException | None] = []  # what Python would print as "Exception ignored in ..."
    monkeypatch.setattr(sys, "unraisablehook", lambda info: ignored.append(info.exc_value))

    class Stops:
        def __del__(self) -> None:  # the handler runs in here, where an exception is "ignored"
            signal.raise_signal(signal.SIGTERM)

    finished = False
    with pytest.raises(errors.Interrupted) as stopped, errors.interruptible(lambda signum: "resume"):
        Stops()
        finished = True  # the work ran on: the stop is reported when the block ends
    assert finished and stopped.value.signum == signal.SIGTERM and ignored == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_train_stopped_says_how_to_resume(prepared_tiny: Path, tmp_path: Path, sig: int) -> None:
    run = tmp_path / "r"
    proc = engine(["engine", "train", "--data", str(prepared_tiny), "--preset", "tiny", "--out", str(tmp_path),
                   "--name", "r", "--set", "epochs=300"])
    try:
        wait_for(lambda: (run / runs.HISTORY).is_file() and len((run / runs.HISTORY).read_text().splitlines()) > 2,
                 proc)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    line = one_error_line(stderr, 128 + sig, proc.returncode,
                          f"interrupted: training {run} was stopped by {signal.Signals(sig).name}",
                          f"is intact: run `python -m engine train --resume {run}`")
    epoch = int(line.split("the last checkpoint, epoch ")[1].split(",")[0])
    from engine.inference import read_checkpoint_file

    assert read_checkpoint_file(run / "checkpoints" / "last.pt")["epoch"] == epoch
    assert not (run / runs.COMPLETE).exists() and not list(run.rglob(".*.tmp"))


def test_explain_stopped_keeps_the_previous_maps(run_copy: Path) -> None:
    cams = run_copy / runs.CAMS
    cams.mkdir()
    (cams / runs.CAMS_META).write_text('{"previous": true}\n')
    before = snapshot(run_copy)
    proc = engine(["engine", "explain", str(run_copy), "--no-sanity", "--multilayer", "0"])
    try:
        wait_for(lambda: any(p.is_dir() for p in run_copy.glob(".cams-*")), proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    one_error_line(stderr, 143, proc.returncode, f"interrupted: explaining {run_copy} was stopped by SIGTERM",
                   "previous cams/", f"run `python -m engine explain {run_copy}` again")
    assert snapshot(run_copy) == before and not list(run_copy.glob(".cams-*"))


@pytest.mark.slow  # a real Ray sweep
def test_a_sweep_stopped_by_sigterm_can_resume(prepared_tiny: Path, tmp_path: Path) -> None:
    ray_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths stay under 107 characters
    space = tmp_path / "space.yaml"
    space.write_text("base_preset: tiny\nfixed: {epochs: 300}\nparams:\n  lr: {choice: [0.003]}\n"
                     "scheduler: fifo\nsearch: random\n")
    out = tmp_path / "sweeps"
    proc = engine(["tuning", "sweep", "--space", str(space), "--data", str(prepared_tiny), "--out", str(out),
                   "--name", "s", "--num-samples", "1", "--no-explain", "--num-cpus", "1"],
                  env={**os.environ, "RAY_TMPDIR": ray_dir, "RAY_USAGE_STATS_ENABLED": "0"})
    summary = out / "s" / "summary.csv"
    try:
        wait_for(lambda: summary.is_file() and ",running," in summary.read_text()
                 and any((out / "s" / "trials").glob("*/checkpoints/last.pt")), proc, 240)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        shutil.rmtree(ray_dir, ignore_errors=True)
    one_error_line(stderr, 143, proc.returncode, f"interrupted: sweep {out}/s was stopped by SIGTERM",
                   f"--out {out} --name s --resume`")
    assert json.loads((out / "s" / "sweep.json").read_text())["status"] == "interrupted"
    assert ",pending," in summary.read_text()
