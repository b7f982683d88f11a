"""notebook_exp's viewer: a Panel app over the store (installed as ``notebook_exp_viewer``)."""
