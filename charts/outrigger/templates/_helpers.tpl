{{/* Chart name, overridable. */}}
{{- define "outrigger.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object's name: the release name when it already contains the chart name, else
"<release>-outrigger". With the release named "outrigger" every name matches the operator's defaults.
Cluster-scoped objects carry it too, so two releases never share one.
*/}}
{{- define "outrigger.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "outrigger.operatorName" -}}{{ include "outrigger.fullname" . }}-operator{{- end }}
{{- define "outrigger.webhookServiceName" -}}{{ include "outrigger.fullname" . }}-webhook{{- end }}
{{- define "outrigger.metricsServiceName" -}}{{ include "outrigger.fullname" . }}-metrics{{- end }}
{{- define "outrigger.webhookConfigName" -}}{{ include "outrigger.fullname" . }}-injector{{- end }}
{{- define "outrigger.webhookSecretName" -}}{{ include "outrigger.fullname" . }}-webhook-tls{{- end }}
{{- define "outrigger.leaseName" -}}{{ include "outrigger.fullname" . }}-operator-leader{{- end }}

{{/* Labels of every object. */}}
{{- define "outrigger.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "outrigger.instanceLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: outrigger
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Which release an object belongs to. */}}
{{- define "outrigger.instanceLabels" -}}
app.kubernetes.io/name: {{ include "outrigger.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* What the operator's pods are selected by. */}}
{{- define "outrigger.selectorLabels" -}}
{{ include "outrigger.instanceLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "outrigger.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The RUST_LOG-style filter for log.level: our crates at that level, the kube runtime quieter. */}}
{{- define "outrigger.logFilter" -}}
{{- if has .Values.log.level (list "info" "debug" "trace") -}}
{{ .Values.log.level }},kube_runtime=warn
{{- else -}}
{{ .Values.log.level }}
{{- end }}
{{- end }}

{{/*
The webhooks of the MutatingWebhookConfiguration, field for field what the operator builds
(outrigger_core::webhook_config::build) minus the caBundle, which the operator applies.
*/}}
{{- define "outrigger.webhook" -}}
{{- $root := index . 0 -}}
{{- $kind := index . 1 -}}
- name: {{ $kind }}.inject.outrigger.dev
  admissionReviewVersions: ["v1"]
  clientConfig:
    service:
      namespace: {{ $root.Release.Namespace }}
      name: {{ include "outrigger.webhookServiceName" $root }}
      path: /mutate
      port: 443
  failurePolicy: {{ $root.Values.webhook.failurePolicy }}
  matchPolicy: Equivalent
  {{- $extra := $root.Values.webhook.namespaceSelector.matchLabels }}
  {{- if eq $kind "services" }}
  namespaceSelector:
    matchExpressions:
      - key: outrigger.dev/injection
        operator: NotIn
        values: ["disabled"]
    {{- with $extra }}
    matchLabels:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  objectSelector:
    matchLabels:
      app.kubernetes.io/managed-by: outrigger
  {{- else }}
  namespaceSelector:
    matchLabels:
      {{- toYaml (merge (dict "outrigger.dev/injection" "enabled") $extra) | nindent 6 }}
  objectSelector:
    matchExpressions:
      - key: app.kubernetes.io/managed-by
        operator: NotIn
        values: ["outrigger"]
  {{- end }}
  reinvocationPolicy: IfNeeded
  rules:
    - apiGroups: [""]
      apiVersions: ["v1"]
      operations: ["CREATE"]
      resources: ["pods"]
      scope: Namespaced
  sideEffects: None
  timeoutSeconds: 5
{{- end }}
