"""JSON and pickle round trips shared by the results classes."""

import json
import pickle

import pytest

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
