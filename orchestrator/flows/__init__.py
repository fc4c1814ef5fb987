"""Provider flows. Each module is one provider's lifecycle as engine phases.

``kaito`` is the KubeFoundry + KAITO flow. A new provider (NVIDIA Dynamo,
KubeRay) is one new module here, built on the same clients and the shared
waiting and diagnostics helpers; the engine does not change.
"""
