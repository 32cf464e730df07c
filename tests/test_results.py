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


def test_result_tables_fold_constant_settings_into_the_caption_and_keep_results():
    import pandas as pd
    from nbhelpers.viz import plots
    df = pd.DataFrame({"run": ["a", "b"], "epochs": [1.0, 1.0], "seeds": [2, 2], "model": ["x", "y"],
                       "final test acc %": ["20.00 ± 1.00", "20.00 ± 1.00"]})
    html = plots.table_style(df).to_html()
    assert "all rows: epochs 1 · seeds 2" in html  # said once, under the table
    assert ">model<" in html and ">final test acc %<" in html and ">run<" in html  # varying / result columns stay
    assert "epochs</th>" not in html and "white-space: nowrap" in html
    assert "caption" not in plots.table_style(df, fold_constant=False).to_html()
