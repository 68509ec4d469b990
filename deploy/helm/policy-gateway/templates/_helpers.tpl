{{- define "policy-gateway.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "policy-gateway.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "policy-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "policy-gateway.adminSecret" -}}
{{- default (printf "%s-admin" (include "policy-gateway.fullname" .)) .Values.admin.existingSecret -}}
{{- end -}}

{{/*
`[limits] replicas`: the number `local-share` divides every limit by while Redis is unreachable.
`limits.replicas` when set; otherwise replicaCount, or autoscaling.minReplicas with the HPA on
(see the comment at `limits.replicas` in values.yaml for what that choice errs towards).
*/}}
{{- define "policy-gateway.fallbackReplicas" -}}
{{- $n := .Values.replicaCount -}}
{{- if .Values.autoscaling.enabled -}}
{{- $n = .Values.autoscaling.minReplicas -}}
{{- end -}}
{{- if not (kindIs "invalid" .Values.limits.replicas) -}}
{{- $n = .Values.limits.replicas -}}
{{- end -}}
{{- if gt (int $n) 10000 -}}
{{- fail (printf "[limits] replicas would be %v: the gateway accepts 1 to 10000" $n) -}}
{{- end -}}
{{- max 1 (int $n) -}}
{{- end -}}

{{/*
The [limits] table of gateway.toml, written by the chart when `limits.backend` is set (empty
otherwise). Appended after `config`, which then must not have a [limits] table of its own.
*/}}
{{- define "policy-gateway.limitsToml" -}}
{{- $l := .Values.limits -}}
{{- if $l.backend -}}
{{- if not (has $l.backend (list "local" "redis")) -}}
{{- fail (printf "limits.backend: %q is neither \"local\" nor \"redis\" (leave it empty to write [limits] in `config` yourself)" $l.backend) -}}
{{- end -}}
{{- if regexMatch `(?m)^\s*\[\s*limits\s*\]` .Values.config -}}
{{- fail "limits.backend is set, so the chart writes [limits]: remove the [limits] table from `config` and move its keys to limits.extraSettings ([[limits.rule]] and [limits.gates] may stay in `config`)" -}}
{{- end }}
[limits]
backend = {{ $l.backend | quote }}
{{- if eq $l.backend "redis" }}
{{- if eq $l.redis.mode "standalone" }}
{{- if not $l.redis.url }}
{{- fail "limits.redis.url is required with limits.backend=redis and limits.redis.mode=standalone" }}
{{- end }}
redis_url = {{ $l.redis.url | quote }}
{{- else if eq $l.redis.mode "cluster" }}
{{- if not $l.redis.clusterNodes }}
{{- fail "limits.redis.clusterNodes needs at least one seed node with limits.redis.mode=cluster" }}
{{- end }}
redis_cluster_nodes = [{{ range $i, $node := $l.redis.clusterNodes }}{{ if $i }}, {{ end }}{{ $node | quote }}{{ end }}]
{{- else }}
{{- fail (printf "limits.redis.mode: %q is neither \"standalone\" nor \"cluster\"" $l.redis.mode) }}
{{- end }}
{{- with $l.redis.timeout }}
redis_timeout = {{ . | quote }}
{{- end }}
{{- if not (has $l.fallback (list "local-share" "fail-open" "fail-closed")) }}
{{- fail (printf "limits.fallback: %q is not local-share, fail-open or fail-closed" $l.fallback) }}
{{- end }}
fallback = {{ $l.fallback | quote }}
replicas = {{ include "policy-gateway.fallbackReplicas" . }}
{{- end }}
{{- with $l.extraSettings }}
{{ . | trim }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* Environment variable the NATS exporter reads its token from (`token_env`). */}}
{{- define "policy-gateway.natsTokenEnv" -}}
GATEWAY_NATS_TOKEN
{{- end -}}

{{/*
The NATS JetStream usage exporter ([[metering.exporter]] kind = "nats"), written when
`usageExport.nats.enabled`; with a [metering] table (the outbox `dir`) unless `config` has one.
*/}}
{{- define "policy-gateway.usageExportToml" -}}
{{- $n := .Values.usageExport.nats -}}
{{- if $n.enabled -}}
{{- if not $n.url -}}
{{- fail "usageExport.nats.url is required with usageExport.nats.enabled" -}}
{{- end -}}
{{- if not (regexMatch `(?m)^\s*\[\s*metering\s*\]` .Values.config) }}
[metering]
dir = {{ .Values.usageExport.outboxDir | quote }}
{{- end }}

[[metering.exporter]]
kind = "nats"
name = {{ $n.name | quote }}
url = {{ $n.url | quote }}
stream = {{ $n.stream | quote }}
subject_prefix = {{ $n.subjectPrefix | quote }}
duplicate_window = {{ $n.duplicateWindow | quote }}
{{- if $n.tokenSecret.name }}
token_env = {{ include "policy-gateway.natsTokenEnv" . | quote }}
{{- end }}
{{- with $n.source }}
source = {{ . | quote }}
{{- end }}
{{- with $n.batchSize }}
batch_size = {{ int . }}
{{- end }}
{{- end -}}
{{- end -}}
