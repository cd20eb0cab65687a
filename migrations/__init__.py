"""The Alembic environment, shipped inside the package as ``hlbd.migrations``.

``hlbd.store.schema`` points Alembic's ``script_location`` at this folder, found with
``importlib.resources``, so an installed hlbd migrates without its source tree.
"""
