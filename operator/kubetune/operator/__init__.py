"""kubetune.operator: the kopf operator that turns a FineTuneJob into an Indexed Job.

Layout (data flows one way):

- ``settings``: operator flags / env (``kubetune operator --help``);
- ``manifests``: pure builders of the children (ConfigMap, headless Service, Job);
- ``reconcile`` and ``status``: pure decisions (what to create, which phase and conditions);
- ``progress``: parse the rank-0 trainer's Prometheus text into ``status.progress``;
- ``kube``: the only module that talks to the API server;
- ``handlers``: thin kopf handlers gluing the above;
- ``metrics``: the operator's own Prometheus metrics; ``rbac``: the API rules it needs.
"""
