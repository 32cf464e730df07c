import json

import numpy as np
import pandas as pd
import pytest

from nbhelpers import results


def test_metrics_json_records_glued_values(tmp_path):
    res = results.Results("99_test")
    res.glue("acc", np.float32(0.5))
    res.glue("label", "a ± b")
    res.table("t", pd.DataFrame({"x": [1.0, np.nan]}))
    path = res.save(tmp_path)
    data = json.loads(path.read_text())
    assert path.name == "99_test.metrics.json"
    assert data["values"] == {"acc": 0.5, "label": "a ± b"} and data["tables"]["t"][1]["x"] is None


def test_glue_rejects_duplicates_and_objects():
    res = results.Results("99_test")
    res.glue("a", 1)
    with pytest.raises(ValueError, match="twice"):
        res.glue("a", 2)
    with pytest.raises(TypeError):
        res.glue("b", [1, 2])
