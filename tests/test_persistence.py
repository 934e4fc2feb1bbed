"""JSON and pickle round trips shared by the results classes."""

import json
import pickle

import pytest

import demandkit as dk
from demandkit.persistence import Persistent


class Saved(Persistent):
    def __init__(self, value: float) -> None:
        self.value = value

    def to_dict(self) -> dict:
        return {"value": self.value}


def test_json_and_pickle_round_trip(tmp_path):
    saved = Saved(1.5)
    assert json.loads(saved.to_json(tmp_path / "saved.json")) == {"value": 1.5}
    assert json.loads((tmp_path / "saved.json").read_text()) == {"value": 1.5}
    saved.to_pickle(tmp_path / "saved.pkl")
    assert Saved.from_pickle(tmp_path / "saved.pkl").value == 1.5


def test_loading_another_type_is_refused(tmp_path):
    with open(tmp_path / "other.pkl", "wb") as handle:
        pickle.dump({"value": 1.5}, handle)
    with pytest.raises(TypeError, match="holds a dict, not a Saved"):
        Saved.from_pickle(tmp_path / "other.pkl")


@pytest.mark.parametrize(
    "content",
    [b"", b"not a pickle at all", pickle.dumps(Saved(1.5))[:-5], b"\x80\x05\x95garbage"],
    ids=["empty", "text", "truncated", "garbage"],
)
def test_corrupt_pickle_names_the_file(tmp_path, content):
    path = tmp_path / "corrupt.pkl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"corrupt\.pkl is not a readable pickle of a Saved") as caught:
        Saved.from_pickle(path)
    assert caught.value.__cause__ is not None


def test_results_classes_refuse_a_corrupt_pickle(tmp_path):
    path = tmp_path / "results.pkl"
    path.write_bytes(b"\x00\x01\x02")
    for cls in (dk.ProblemResults, dk.MixedLogitResults):
        with pytest.raises(ValueError, match=f"results.pkl is not a readable pickle of a {cls.__name__}"):
            cls.from_pickle(path)


def test_a_missing_file_is_still_a_file_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        Saved.from_pickle(tmp_path / "missing.pkl")
