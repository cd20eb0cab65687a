"""The explorer, shipped inside the package as ``hlbd.app``.

Its page script is ``main.py`` (``streamlit run app/main.py`` from a checkout, or ``hlbd
ui`` from anywhere); the modules beside it import each other by name, since Streamlit
puts the script's folder on ``sys.path``. This file only makes the folder a package, so
``importlib.resources`` finds it in an installed hlbd and in a checkout alike.
"""
