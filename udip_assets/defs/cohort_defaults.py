"""Per-cohort config defaults from ``cohort.yaml``, for runs nobody configured by hand.

Runs that automation launches carry no run config. A cohort can say how its assets should run by
default in its ``cohort.yaml``::

    defaults:
      subjects: {train_count: 120, val_count: 40}
      vit_ae_model: {epochs: 60, device: cuda}

Each key under ``defaults`` is an asset name, each value fields of that asset's config class.
They replace the asset's built-in defaults: a field a run's config sets to anything other than
the built-in default still wins (a run config that repeats the built-in value cannot be told
apart from no config, and the cohort's value applies).
"""

from __future__ import annotations

from typing import TypeVar

import dagster as dg

from udip_assets.cohort.spec import COHORT_FILE, load_cohort
from udip_assets.defs.resources import UdipHome

C = TypeVar("C", bound=dg.Config)


def with_cohort_defaults(config: C, home: UdipHome, cohort: str, asset: str) -> C:
    """``config`` with the cohort's ``defaults.<asset>`` applied where it holds a built-in default."""
    spec = load_cohort(home.cohort_dir(cohort))
    defaults = spec.extra.get("defaults") or {}
    given = defaults.get(asset) or {}
    where = f"{spec.root / COHORT_FILE}: defaults.{asset}"
    if not isinstance(given, dict):
        raise dg.Failure(f"{where} must be a mapping of config fields, got {given!r}")
    cls = type(config)
    unknown = sorted(set(given) - set(cls.model_fields))
    if unknown:
        raise dg.Failure(f"{where} names fields {unknown} that {cls.__name__} does not have; it has "
                         f"{sorted(cls.model_fields)}")
    builtin = cls()
    update = {k: v for k, v in given.items() if getattr(config, k) == getattr(builtin, k)}
    if not update:
        return config
    try:
        return cls(**{**config.model_dump(), **update})
    except Exception as exc:  # pydantic's validation error names the field
        raise dg.Failure(f"{where}: {exc}") from exc
