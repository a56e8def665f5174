{{/* Common labels. */}}
{{- define "statehold.labels" -}}
app.kubernetes.io/name: statehold
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: statehold
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "statehold.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* The unix socket directory of the plugin on the host. */}}
{{- define "statehold.pluginDir" -}}
{{ .Values.kubeletDir }}/plugins/{{ .Values.driverName }}
{{- end -}}

{{/* Restricted-profile security context for containers that need no host access. */}}
{{- define "statehold.restricted" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "statehold.podEnv" -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}

{{/* Sidecars in the node pod: no capabilities, but the same uid (root) as the privileged
plugin that owns the socket, so they can connect to it. */}}
{{- define "statehold.sidecar" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Host-based shared roots the node pods mount (every class's sharedRoot and
shared.extraHostRoots), sorted and unique, as a JSON list. */}}
{{- define "statehold.sharedRoots" -}}
{{- $roots := list -}}
{{- range .Values.sharedStorageClasses -}}
{{- if .sharedRoot -}}{{- $roots = append $roots .sharedRoot -}}{{- end -}}
{{- end -}}
{{- range .Values.shared.extraHostRoots -}}{{- $roots = append $roots . -}}{{- end -}}
{{- $roots | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/* volumeMounts of the shared roots: the same path as on the host, and HostToContainer so
a share the host mounts (or remounts) after the pod started is seen inside. */}}
{{- define "statehold.sharedRootMounts" -}}
{{- range $i, $root := include "statehold.sharedRoots" . | fromJsonArray }}
- name: shared-root-{{ $i }}
  mountPath: {{ $root }}
  mountPropagation: HostToContainer
{{- end }}
{{- end -}}

{{- define "statehold.sharedRootVolumes" -}}
{{- range $i, $root := include "statehold.sharedRoots" . | fromJsonArray }}
- name: shared-root-{{ $i }}
  hostPath:
    path: {{ $root }}
    # Must exist: an empty directory created in its place would put "shared" volumes on
    # this node's own disk.
    type: Directory
{{- end }}
{{- end -}}
