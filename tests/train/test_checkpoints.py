"""Checkpoint pieces that a single process can test directly: each rank's random generators."""

import pytest
import torch

from ablate.train import checkpoints, fsdp
from ablate.train.common import TrainingError


def save_as_rank(monkeypatch, folder, rank: int, seed: int) -> torch.Tensor:
    """Seed, save as ``rank``, and return what the generator draws next."""
    monkeypatch.setattr(fsdp, "rank", lambda: rank)
    torch.manual_seed(seed)
    checkpoints.save_rank_rng(folder)
    return torch.rand(4)


def test_each_rank_resumes_its_own_generators(tmp_path, monkeypatch):
    next_draw = {rank: save_as_rank(monkeypatch, tmp_path, rank, 100 + rank) for rank in (0, 1)}
    assert not torch.equal(next_draw[0], next_draw[1])
    for rank in (1, 0):
        torch.manual_seed(7)  # a fresh process's state, unlike either saved one
        states = checkpoints.checkpoint_rng(tmp_path, rank, 2, {"world_size": 2})
        checkpoints.restore_rng_states(states)
        assert torch.equal(torch.rand(4), next_draw[rank]), rank


def test_another_number_of_processes_has_no_saved_stream_and_a_missing_file_is_an_error(
        tmp_path, monkeypatch):
    save_as_rank(monkeypatch, tmp_path, 0, 1)
    for rank in (0, 3):  # rank 0's file is there, but it is a stream of a 2-process run
        assert checkpoints.checkpoint_rng(tmp_path, rank, 4, {"world_size": 2}) is None
    with pytest.raises(TrainingError, match="rng_rank3.pt is missing"):
        checkpoints.checkpoint_rng(tmp_path, 3, 4, {"world_size": 4})


def test_a_checkpoint_from_before_per_rank_files_still_resumes(tmp_path):
    torch.manual_seed(5)
    legacy = {"scheduler": {}, **checkpoints.rng_states()}
    expected = torch.rand(3)
    checkpoints.restore_rng_states(checkpoints.checkpoint_rng(tmp_path, 0, 1, legacy))
    assert torch.equal(torch.rand(3), expected)


def test_a_checkpoint_that_cannot_be_written_leaves_no_half_folder(tmp_path, monkeypatch):
    """A full disk mid-save: the half-written folder would hold its space for every later step."""
    import errno

    (tmp_path / ".step_2.tmp").mkdir()  # a save killed half way, earlier
    (tmp_path / ".step_2.tmp" / "model.pt").write_bytes(b"x" * 100)

    def disk_full(folder, model, optimizer):
        (folder / "model.pt").write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsdp, "save_train_state", disk_full)
    with pytest.raises(OSError, match="No space left"):
        checkpoints.save_checkpoint(tmp_path, 4, None, None, None, {})
    assert list(tmp_path.iterdir()) == []
