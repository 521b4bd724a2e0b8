"""Record names: one per process, ``-rank<N>`` under torch.distributed, and how ranks find each other."""

from pathlib import Path

from gradscope import RunView
from gradscope.distributed import peer_paths, record_path, run_fields


def test_a_single_process_records_where_asked_or_in_the_runs_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    assert record_path("r.sqlite", "train") == Path("r.sqlite")
    fresh = record_path(None, "train")
    assert fresh.parent == tmp_path / ".gradscope" / "runs" and fresh.name.endswith("-train.sqlite")
    assert run_fields() == {"rank": None, "world_size": 1}
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process is not a distributed job
    assert record_path("r.sqlite", "train") == Path("r.sqlite")


def test_each_rank_gets_its_own_record_and_finds_the_others(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert record_path("out/r.sqlite", "train") == Path("out/r-rank1.sqlite")
    assert record_path("out/r-rank1.sqlite", "train") == Path("out/r-rank1.sqlite")  # already named
    fresh = record_path(None, "train")
    assert fresh.name.endswith("-train-abc-rank1.sqlite")
    assert run_fields() == {"rank": 1, "world_size": 3}
    peers = [p.name for p in peer_paths(fresh, 3)]
    assert peers == [fresh.name.replace("rank1", f"rank{r}") for r in range(3)]
    run = RunView(info=run_fields(), record=Path("out/r-rank0.sqlite"))
    assert run.peer_records() == [Path(f"out/r-rank{r}.sqlite") for r in range(3)]
    assert RunView(info={"rank": None}, record=Path("r.sqlite")).peer_records() == [Path("r.sqlite")]


def test_ranks_that_started_in_different_seconds_find_each_other(tmp_path):
    """Default record names carry each rank's start time: a second apart, still one job."""
    for name in ("20260101-120000-train-abc-rank0.sqlite", "20260101-120001-train-abc-rank1.sqlite",
                 "20260101-110000-train-abc-rank2.sqlite",  # an hour earlier: another run
                 "20260101-120001-train-abcd-rank2.sqlite"):  # another job
        (tmp_path / name).write_bytes(b"")
    peers = peer_paths(tmp_path / "20260101-120000-train-abc-rank0.sqlite", 3)
    assert [p.name for p in peers] == [
        "20260101-120000-train-abc-rank0.sqlite", "20260101-120001-train-abc-rank1.sqlite",
        "20260101-120000-train-abc-rank2.sqlite"]  # not found: the expected name
