"""Labels of every child: ``app.kubernetes.io/*`` plus ``kubetune.io/finetunejob``."""

from __future__ import annotations

FINETUNEJOB_LABEL = "kubetune.io/finetunejob"
COMPONENT_LABEL = "app.kubernetes.io/component"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SPEC_HASH_ANNOTATION = "kubetune.io/spec-hash"
# the FineTuneJob's metadata.generation the Job was built from: an upgrade that changes the hash (a new default)
# leaves it equal, a user's spec change does not
GENERATION_ANNOTATION = "kubetune.io/generation"
# set when kubetune itself suspended the Job (spec.suspend): only then does kubetune resume it; any other
# suspension (Kueue's, e.g. with manageJobsWithoutQueueName) is left to whoever made it
SUSPENDED_BY_ANNOTATION = "kubetune.io/suspended-by"
SUSPENDED_BY_KUBETUNE = "kubetune"
MANAGED_BY = "kubetune-operator"

TRAINER = "trainer"
RENDEZVOUS = "rendezvous"
CONFIG = "trainer-config"


def labels(ftj_name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kubetune",
        "app.kubernetes.io/instance": ftj_name,
        COMPONENT_LABEL: component,
        "app.kubernetes.io/part-of": "kubetune",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        FINETUNEJOB_LABEL: ftj_name,
    }


def selector(ftj_name: str) -> dict[str, str]:
    """Selects the training pods of one FineTuneJob."""
    return {FINETUNEJOB_LABEL: ftj_name, COMPONENT_LABEL: TRAINER}
