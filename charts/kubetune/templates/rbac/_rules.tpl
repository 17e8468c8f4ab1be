{{- /*
The operator's permissions: exactly the apiGroups / resources / verbs it uses, as listed in
operator/kubetune/operator/rbac.py (RULES). tests/chart/test_rbac.py fails when the two differ.
Namespaced rules go to a ClusterRole (all namespaces) or to a Role in each watched namespace;
cluster-scoped ones always go to a ClusterRole. Children are never deleted by the operator: the garbage
collector removes them through their ownerReferences. kopf peering rules appear only with replicaCount > 1,
for the one peering kind in use.
*/}}

{{/* Rules on namespaced resources. */}}
{{- define "kubetune.rbac.namespacedRules" -}}
- apiGroups: [kubetune.io]
  resources: [finetunejobs]
  verbs: [get, list, watch, patch]
- apiGroups: [kubetune.io]
  resources: [finetunejobs/status]
  verbs: [patch]
- apiGroups: [kubetune.io]
  resources: [finetunejobs/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, get, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [create, get]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
{{- if and (include "kubetune.peering" .) (include "kubetune.watchNamespaces" . | fromJsonArray) }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end }}

{{/* Rules on cluster-scoped resources (kopf's discovery of namespaces and CRDs, cluster peering). */}}
{{- define "kubetune.rbac.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- if and (include "kubetune.peering" .) (not (include "kubetune.watchNamespaces" . | fromJsonArray)) }}
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end }}
