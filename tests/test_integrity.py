"""tudui/integrity.py: what a file must be before it is read, and the checksum of a checkpoint's weights."""
import os
import zipfile

import torch

from tudui import integrity


def test_the_weights_checksum_covers_every_kind_of_tensor_and_changes_with_one_bit():
    weights = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).state_dict()  # and an int64 0-dim
    before = integrity.weights_checksum(weights)
    weights["0.weight"].view(torch.int32)[0, 0, 0, 0] ^= 1
    assert integrity.weights_checksum(weights) != before and len(before) == 64


def test_a_named_pipe_is_no_regular_file_and_a_missing_file_is_left_to_the_reader(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    assert integrity.regular_file_problem(tmp_path / "pipe") == "is a named pipe, not a file"
    assert integrity.regular_file_problem(tmp_path / "missing") is None


def test_a_compressed_zip_member_is_a_problem_where_torch_save_writes_none(tmp_path):
    torch.save({"w": torch.zeros(3)}, tmp_path / "plain.pth")
    assert integrity.checkpoint_size_problem(tmp_path / "plain.pth") is None
    with zipfile.ZipFile(tmp_path / "deflated.pth", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"x" * 1000)
    assert "holds a compressed member (archive/data.pkl)" in integrity.checkpoint_size_problem(tmp_path / "deflated.pth")
