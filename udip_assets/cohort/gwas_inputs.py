"""The GWAS sample: UDIPs joined to the subjects eligible for association testing.

Eligible = kept (unrelated, last usable visit), in the inference split (the paper's GWAS set:
subjects the model never trained on), with genotypes and complete covariates.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from udip_assets.errors import CovariateError
from udip_assets.genetics.design import CovariateSpec, design_matrix
from udip_assets.store.schema import UDIP_COLUMNS


@dataclass(frozen=True)
class GwasSample:
    """Phenotypes and covariates of the GWAS subjects, rows aligned, indexed by subject id (= IID).

    Attributes
    ----------
    phenotypes : DataFrame (n_subjects, n_dims)
        ``udip_000..``, float64.
    covariates : DataFrame (n_subjects, k)
        The design matrix without intercept (one-hot categories).
    n_excluded : dict
        Subjects left out and why (not in the inference split, no UDIPs, incomplete covariates).
    """

    phenotypes: pd.DataFrame
    covariates: pd.DataFrame
    n_excluded: dict


def gwas_sample(subjects: pd.DataFrame, udips: pd.DataFrame, spec: CovariateSpec,
                split: str = "inference") -> GwasSample:
    """Join ``udips`` rows to the eligible ``subjects`` rows and build the covariate matrix.

    Parameters
    ----------
    subjects : DataFrame
        Rows of the ``subjects`` table for one cohort.
    udips : DataFrame
        Rows of the ``udips`` table for one cohort and model_id.
    spec : CovariateSpec
        Which covariates, numeric or one-hot.
    split : str
        The split tested ('inference'; 'all' takes every kept subject).

    Raises
    ------
    CovariateError
        Fewer than 3 + k subjects remain (nothing can be estimated).
    """
    kept = subjects[subjects["kept"].astype(bool) & subjects["has_genotypes"].astype(bool)]
    n_kept = len(kept)
    if split != "all":
        kept = kept[kept["split"] == split]
    excluded = {"not_in_split": n_kept - len(kept)}
    cols = [c for c in (*spec.numeric, *spec.categorical) if c in kept.columns]
    complete = kept[cols].notna().all(axis=1)
    excluded["incomplete_covariates"] = int((~complete).sum())
    kept = kept[complete].set_index(kept.loc[complete, "subject_id"].astype(str))
    # A model narrower than 128 dims leaves the table's higher udip_ columns NULL: they are not phenotypes.
    dims = [c for c in UDIP_COLUMNS if c in udips.columns and udips[c].notna().any()]
    pheno = udips.set_index(udips["subject_id"].astype(str))[dims].astype("float64")
    common = kept.index.intersection(pheno.index)
    excluded["no_udips"] = len(kept) - len(common)
    kept, pheno = kept.loc[common], pheno.loc[common]
    covariates = design_matrix(kept, spec)
    if len(common) < covariates.shape[1] + 3:
        raise CovariateError(f"only {len(common)} GWAS subjects remain for {covariates.shape[1]} covariates "
                             f"(excluded: {excluded}); check that udip_embeddings covered the '{split}' split")
    return GwasSample(pheno, covariates, excluded)
