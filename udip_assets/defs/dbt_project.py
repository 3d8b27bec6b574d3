"""Where the dbt project lives, and how its manifest is prepared, the dagster-dbt way.

This module holds the :class:`~dagster_dbt.DbtProject` alone (no ``@dbt_assets``), so it imports
before the manifest exists and ``dagster-dbt project prepare-and-package --file`` can load it:

- ``make install`` runs ``dagster-dbt project prepare-and-package --file udip_assets/defs/dbt_project.py``
  (``dbt parse``) whenever a model, seed or .yml is newer than ``target/manifest.json``;
- under ``dagster dev`` (``make ui``), importing this module runs ``DbtProject.prepare_if_dev`` when
  the manifest is stale, so an edited model is picked up on reload (a fresh manifest is not parsed
  again, which would cost every launched run ~10 s);
- the test session calls :func:`prepare_manifest`, the same preparer.
"""

import os
import sys
from pathlib import Path

from dagster_dbt import DbtProject

from udip_assets.errors import UdipConfigError

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_annotations"
dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


def manifest_is_stale() -> bool:
    """True when ``target/manifest.json`` is missing or older than a model, seed or .yml of the project."""
    manifest = dbt_project.manifest_path
    if not manifest.exists():
        return True
    sources = [p for p in DBT_PROJECT_DIR.rglob("*") if p.suffix in {".sql", ".yml", ".csv"}
               and "target" not in p.parts and "logs" not in p.parts]
    return manifest.stat().st_mtime < max((p.stat().st_mtime for p in sources), default=0.0)


def _with_venv_dbt() -> None:
    """Put the ``dbt`` installed beside this Python first on PATH: dagster-dbt's preparer runs ``dbt``."""
    bindir = os.path.dirname(sys.executable)
    if os.path.exists(os.path.join(bindir, "dbt")) and os.environ.get("PATH", "").split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def prepare_manifest(force: bool = False) -> Path:
    """Prepare the project (dagster-dbt's preparer: ``dbt parse``) when its manifest is stale.

    Returns the manifest path. Called by the test session; ``make install`` runs the CLI.
    """
    if force or manifest_is_stale():
        _with_venv_dbt()
        try:
            dbt_project.preparer.prepare(dbt_project)
        except Exception as exc:  # the dbt CLI's own error names the model and line
            raise UdipConfigError(f"preparing the dbt project {DBT_PROJECT_DIR} failed: {exc}; run it by hand to "
                                  "see the error: dbt parse --project-dir dbt_annotations "
                                  "--profiles-dir dbt_annotations") from exc
        if not dbt_project.manifest_path.exists():
            raise UdipConfigError(f"dbt parse wrote no {dbt_project.manifest_path}; run it by hand: dbt parse "
                                  "--project-dir dbt_annotations --profiles-dir dbt_annotations")
    return dbt_project.manifest_path


if manifest_is_stale():
    _with_venv_dbt()
    dbt_project.prepare_if_dev()  # acts under `dagster dev` only


if __name__ == "__main__":
    print(prepare_manifest())
