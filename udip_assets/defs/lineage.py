"""Model lineage through the asset graph: which model an asset's rows were computed from.

Every asset from training to the loci returns a :class:`ModelRef`, the value that says which
model (``model_id``) its rows belong to. The ``lineage_io`` IO manager stores it as JSON under
``$UDIP_HOME/lineage/<asset>/<partition>.json`` and hands it to the downstream assets as an
input, so the model a GWAS chromosome tests is the model of the UDIPs it read, and the minP of a
cohort is computed from chromosomes that all tested one model: re-running an upstream asset
between two stages can no longer mix two models in one table (:func:`one_model`).

The flow::

    vit_ae_model          -> ModelRef(run_id, model_id = best validation loss)
    checkpoint_loci_sweep -> ModelRef(model_id = the checkpoint with the most loci)
    udip_embeddings       -> ModelRef(the model that encoded the cohort's GWAS scans)
    gwas_sumstats         -> ModelRef(..., chrom) per cohort x chromosome
    minp_sumstats, multivariate_sumstats -> ModelRef (one model over all chromosomes)
    genomic_risk_loci     <- both of them (must agree)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import dagster as dg

from udip_assets.atomic import write_text_atomic
from udip_assets.defs.partitions import chrom_order
from udip_assets.defs.resources import UdipHome

LINEAGE_IO = "lineage_io"
# AssetIn metadata: the input may be absent (the IO manager then passes None).
OPTIONAL = {"optional": True}


@dataclass(frozen=True)
class ModelRef:
    """The model an asset partition's rows come from.

    Attributes
    ----------
    cohort : str
        The cohort partition.
    model_id : str
        Training run + epoch (``checkpoints.model_id``).
    run_id : str
        The training run the model belongs to.
    n_dims : int
        UDIP dimensions of the model (its encoder width): the GWAS's phenotypes.
    chrom : str or None
        The chromosome, for ``gwas_sumstats`` partitions.
    """

    cohort: str
    model_id: str
    run_id: str
    n_dims: int
    chrom: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelRef:
        return cls(**json.loads(text))


def one_model(refs: Sequence[ModelRef], cohort: str) -> ModelRef:
    """The one model of ``refs`` (a cohort's GWAS chromosomes); an error naming each model's chromosomes if not.

    Raises
    ------
    dagster.Failure
        No chromosome, or chromosomes of more than one model.
    """
    if not refs:
        raise dg.Failure(f"no gwas_sumstats chromosome of cohort {cohort} has been materialized; "
                         "materialize gwas_sumstats for its chromosomes first")
    by_model: dict[str, list[str]] = {}
    for ref in refs:
        by_model.setdefault(ref.model_id, []).append(str(ref.chrom))
    if len(by_model) > 1:
        listing = "; ".join(f"{m}: chromosomes {', '.join(sorted(c, key=chrom_order))}"
                            for m, c in sorted(by_model.items()))
        raise dg.Failure(f"the GWAS chromosomes of cohort {cohort} tested different models ({listing}); "
                         f"re-materialize gwas_sumstats for every chromosome of {cohort} so that they test "
                         "the UDIPs udip_embeddings holds now")
    return refs[0]


def same_model(refs: dict[str, ModelRef], cohort: str) -> ModelRef:
    """The one model of named upstream refs (asset name -> ref); an error naming each if they disagree."""
    ids = {ref.model_id for ref in refs.values()}
    if len(ids) > 1:
        listing = ", ".join(f"{name} of {ref.model_id}" for name, ref in sorted(refs.items()))
        raise dg.Failure(f"cohort {cohort}: {listing}; re-materialize them from the same gwas_sumstats")
    return next(iter(refs.values()))


class LineageIOManager(dg.ConfigurableIOManager):
    """Stores each asset partition's :class:`ModelRef` as JSON; loads one, or one per upstream partition.

    An input mapped to several upstream partitions (a cohort's chromosomes) receives the list of
    the refs that exist; an input mapped to one partition receives its ref, or None when it was
    never materialized and the input is marked ``OPTIONAL`` (else an error naming the asset).
    """

    home: UdipHome

    def _path(self, asset_key: dg.AssetKey, partition: str) -> Path:
        return self.home.root() / "lineage" / Path(*asset_key.path) / f"{partition.replace('|', '__')}.json"

    def handle_output(self, context: dg.OutputContext, obj: ModelRef) -> None:
        if not isinstance(obj, ModelRef):
            raise dg.Failure(f"{context.asset_key.to_user_string()} returned {type(obj).__name__}; "
                             "model-bearing assets return a ModelRef")
        path = self._path(context.asset_key, context.asset_partition_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, obj.to_json() + "\n")
        context.add_output_metadata({"model_id": obj.model_id, "lineage": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> ModelRef | list[ModelRef] | None:
        asset = context.asset_key
        keys = context.asset_partition_keys
        found = {k: p for k in keys if (p := self._path(asset, k)).exists()}
        if isinstance(context.asset_partitions_def, dg.MultiPartitionsDefinition):
            return [ModelRef.from_json(found[k].read_text()) for k in keys if k in found]
        if len(keys) != 1:
            raise dg.Failure(f"{asset.to_user_string()}: expected one upstream partition, got {keys}")
        if keys[0] in found:
            return ModelRef.from_json(found[keys[0]].read_text())
        if context.definition_metadata.get("optional"):
            return None
        raise dg.Failure(f"{asset.to_user_string()} has not been materialized for {keys[0]!r} (no "
                         f"{self._path(asset, keys[0])}); materialize it for this partition first")
