"""The worker action's sources, installed with dask_whisk so that the artifact builder finds them:
``__main__.py`` is the OpenWhisk entry point, shipped as the action's ``__main__``; ``Dockerfile``
builds the blackbox image."""
