"""Scripts shipped inside the bundle: the MONAI Deploy example application (``deploy_app``) and its
SDK-independent helpers (``deploy_io``)."""
