"""Covariate design matrices and PLINK 2 text files."""

import numpy as np
import pandas as pd
import pytest

from udip_assets.errors import CovariateError, UdipConfigError
from udip_assets.genetics.design import CovariateSpec, design_matrix, read_plink2_table, write_plink2_table


def _subjects(n=40):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"age_years": rng.normal(64, 7, n), "sex": rng.integers(0, 2, n),
                       "inv_cnr": rng.normal(0.3, 0.02, n),
                       "ethnicity": [1001] * (n - 7) + [4001] * 5 + [3001] * 2,
                       "centre": [11025] * 20 + [11026] * 12 + [11027] * 8})
    for i in range(1, 11):
        df[f"pc{i}"] = rng.normal(size=n)
    return df


def test_paper_covariates_with_one_hot_levels_against_pandas_dummies():
    subj = _subjects()
    x = design_matrix(subj, CovariateSpec())
    assert list(x.columns[:12]) == ["age_years", "sex", *(f"pc{i}" for i in range(1, 11))]
    # 3001 has 2 subjects (< 5): pooled with the reference; 1001 and 11025 are references.
    assert {"ethnicity=4001", "centre=11026", "centre=11027"} == {c for c in x.columns if "=" in c}
    dummies = pd.get_dummies(subj["centre"].astype(str), dtype=float)
    np.testing.assert_array_equal(x["centre=11026"], dummies["11026"])
    assert x.dtypes.eq(np.float64).all()


def test_missing_values_and_columns_are_named():
    subj = _subjects()
    subj.loc[3, "inv_cnr"] = np.nan
    with pytest.raises(CovariateError, match="inv_cnr"):
        design_matrix(subj, CovariateSpec())
    with pytest.raises(CovariateError, match="height"):
        design_matrix(_subjects(), CovariateSpec(numeric=("height",)))
    with pytest.raises(UdipConfigError, match="both"):
        CovariateSpec(numeric=("sex",), categorical=("sex",))


def test_plink2_text_round_trip(tmp_path):
    frame = pd.DataFrame({"udip_000": [0.5, np.nan, -1.25], "udip_001": [1.0, 2.0, 3.0]},
                         index=pd.Index(["10", "11", "12"], name="IID"))
    write_plink2_table(tmp_path / "p.txt", frame)
    assert (tmp_path / "p.txt").read_text().splitlines()[0] == "#FID\tIID\tudip_000\tudip_001"
    back = read_plink2_table(tmp_path / "p.txt")
    pd.testing.assert_frame_equal(back.astype(float), frame, check_names=False)


def test_duplicate_iids_refused(tmp_path):
    (tmp_path / "c.txt").write_text("#IID age\n1 50\n1 51\n")
    with pytest.raises(CovariateError, match="repeats"):
        read_plink2_table(tmp_path / "c.txt")
