"""Where the dbt project lives, and how its manifest is built (no dagster-dbt asset here, so this
module imports before the manifest exists: ``python -m udip_assets.defs.dbt_project`` builds it).
"""

from pathlib import Path

from dagster_dbt import DbtProject

from udip_assets.errors import UdipConfigError

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_annotations"
dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


def prepare_manifest(force: bool = False) -> Path:
    """Run ``dbt parse`` to (re)build ``target/manifest.json`` when it is missing or older than the project.

    Returns the manifest path. Called by ``make install`` and by the test session.
    """
    from dbt.cli.main import dbtRunner

    manifest = dbt_project.manifest_path
    sources = [p for p in DBT_PROJECT_DIR.rglob("*") if p.suffix in {".sql", ".yml", ".csv"}
               and "target" not in p.parts and "logs" not in p.parts]
    newest = max((p.stat().st_mtime for p in sources), default=0.0)
    if force or not manifest.exists() or manifest.stat().st_mtime < newest:
        result = dbtRunner().invoke(["parse", "--project-dir", str(DBT_PROJECT_DIR),
                                     "--profiles-dir", str(DBT_PROJECT_DIR), "--quiet"])
        if not result.success or not manifest.exists():
            raise UdipConfigError(f"dbt parse failed for {DBT_PROJECT_DIR}: {result.exception}; "
                                  "run it by hand to see the error: dbt parse --project-dir dbt_annotations "
                                  "--profiles-dir dbt_annotations")
    return manifest


if __name__ == "__main__":
    print(prepare_manifest())
