"""Package layout (everything else is in pyproject.toml).

The top-level ``migrations/`` stays the source of truth (a checkout's ``alembic upgrade head``
uses it through ``alembic.ini``); it is also installed as the subpackage ``etl._migrations`` so a
wheel carries its migrations and ``etl migrate`` works from any directory. pyproject.toml's
declarative ``packages.find`` cannot map a directory outside ``etl/`` into the package, hence this
file.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["etl", "etl.*"]),
        "etl._migrations",
        "etl._migrations.versions",
    ],
    package_dir={"etl._migrations": "migrations"},
    package_data={"etl": ["py.typed"], "etl._migrations": ["script.py.mako"]},
)
