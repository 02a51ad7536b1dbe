{{/* Names, labels and the pieces both workloads share. */}}

{{- define "audiochat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>", cut to leave room for the "-core"/"-edge" suffixes within 63 characters. */}}
{{- define "audiochat.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 58 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 58 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 58 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "audiochat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "audiochat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "audiochat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "audiochat.labels" -}}
helm.sh/chart: {{ include "audiochat.chart" . }}
{{ include "audiochat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: audiochat
{{- end }}

{{/*
The workloads this release runs, as a list: "core", and "edge" unless turned off.
Templates range over it with a context built by audiochat.component.
*/}}
{{- define "audiochat.components" -}}
{{- if .Values.edge.enabled }}core edge{{ else }}core{{ end }}
{{- end }}

{{/* Per-workload names and labels; the argument is (dict "root" $ "component" "core"|"edge"). */}}
{{- define "audiochat.componentName" -}}
{{- printf "%s-%s" (include "audiochat.fullname" .root) .component }}
{{- end }}

{{- define "audiochat.componentSelectorLabels" -}}
{{ include "audiochat.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "audiochat.componentLabels" -}}
{{ include "audiochat.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Pods carrying this label may reach the core when the NetworkPolicy is on. */}}
{{- define "audiochat.coreClientLabel" -}}
audiochat/core-client: "true"
{{- end }}

{{- define "audiochat.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{- define "audiochat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "audiochat.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "host:port" of the core's Service, the edge's gRPC target. */}}
{{- define "audiochat.coreTarget" -}}
{{- printf "%s:%d" (include "audiochat.componentName" (dict "root" . "component" "core")) (int .Values.core.service.port) }}
{{- end }}

{{/* The Secret the chart creates holds the inline OpenAI key and/or the inline edge API keys. */}}
{{- define "audiochat.secretName" -}}
{{- include "audiochat.fullname" . }}
{{- end }}

{{- define "audiochat.createsOpenaiSecret" -}}
{{- if and .Values.openai.apiKey (not .Values.openai.existingSecret) }}true{{ end }}
{{- end }}

{{- define "audiochat.createsApiKeysSecret" -}}
{{- if and .Values.edge.enabled .Values.edge.apiKeys (not .Values.edge.existingApiKeysSecret) }}true{{ end }}
{{- end }}

{{- define "audiochat.createsSecret" -}}
{{- if or (include "audiochat.createsOpenaiSecret" .) (include "audiochat.createsApiKeysSecret" .) }}true{{ end }}
{{- end }}

{{/* The kubelet waits for the preStop pause, then the service's own drain grace, then a margin. */}}
{{- define "audiochat.terminationGracePeriodSeconds" -}}
{{- add .Values.drain.preStopSeconds .Values.drain.graceSeconds .Values.drain.marginSeconds }}
{{- end }}

{{/* An autoscaler's bounds; the argument is (dict "name" "core.keda" "min" n "max" m). */}}
{{- define "audiochat.validateReplicaBounds" -}}
{{- if gt (int64 .min) (int64 .max) }}
{{- fail (printf "%s.minReplicas (%d) is over %s.maxReplicas (%d)" .name (int64 .min) .name (int64 .max)) }}
{{- end }}
{{- end }}

{{- define "audiochat.validate" -}}
{{- if and .Values.openai.apiKey .Values.openai.existingSecret }}
{{- fail "set either openai.apiKey or openai.existingSecret, not both" }}
{{- end }}
{{- $upstream := .Values.config.upstream }}
{{- if and (hasPrefix "openai" $upstream) (not (or .Values.openai.apiKey .Values.openai.existingSecret)) }}
{{- fail (printf "config.upstream=%s needs a key: set openai.existingSecret (or openai.apiKey); the core would refuse to start without one" $upstream) }}
{{- end }}
{{- if and .Values.edge.apiKeys .Values.edge.existingApiKeysSecret }}
{{- fail "set either edge.apiKeys or edge.existingApiKeysSecret, not both" }}
{{- end }}
{{- end }}

{{/*
A memory quantity ("256Mi", "1G", "0.5Gi", 536870912) in bytes, as an integer. The argument is
(dict "quantity" q "name" "edge.resources.limits.memory"), the name for the error on a form it cannot read.
*/}}
{{- define "audiochat.bytes" -}}
{{- $quantity := toString .quantity }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $quantity }}
{{- $suffix := trimPrefix $number $quantity }}
{{- $factors := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "K" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 }}
{{- if or (not $number) (not (hasKey $factors $suffix)) }}
{{- fail (printf "%s: cannot read %q as a memory quantity (use a number of bytes or Ki, Mi, Gi, Ti, k, M, G, T)" .name $quantity) }}
{{- end }}
{{- mulf (float64 $number) (index $factors $suffix) | int64 }}
{{- end }}

{{/*
The edge's cap on all resume buffers together, in bytes (AUDIOCHAT_RESUME_BUFFER_BYTES), or "" to keep the
application's default when the edge has no memory limit. Full buffers take about 1.2 times the bytes they
count in the process (benchmarks/edge_memory.py), so they are given 5/4 of the cap: derived as
(limit - headroom) * 4/5 when not set, and refused when 5/4 of it plus the headroom exceeds the limit, as
full buffers would get the pod OOM-killed before the cap applied.
*/}}
{{- define "audiochat.edge.resumeBufferBytes" -}}
{{- $edge := .Values.edge }}
{{- $limit := dig "limits" "memory" "" $edge.resources }}
{{- $cap := $edge.resumeBufferBytes }}
{{- if $limit }}
{{- $limitBytes := include "audiochat.bytes" (dict "quantity" $limit "name" "edge.resources.limits.memory") | int64 }}
{{- $headroom := include "audiochat.bytes" (dict "quantity" $edge.memoryHeadroom "name" "edge.memoryHeadroom") | int64 }}
{{- if kindIs "invalid" $cap }}
{{- $cap = div (mul (sub $limitBytes $headroom) 4) 5 }}
{{- if le $cap 0 }}
{{- fail (printf "edge.resources.limits.memory (%s) leaves nothing for resume buffers after edge.memoryHeadroom (%s): raise the limit" $limit $edge.memoryHeadroom) }}
{{- end }}
{{- else if gt (add (div (mul $cap 5) 4) $headroom) $limitBytes }}
{{- fail (printf "5/4 of edge.resumeBufferBytes (%d; buffers take about 1.2 times what they count) + edge.memoryHeadroom (%s) exceed edge.resources.limits.memory (%s): full resume buffers would get the pod OOM-killed before the cap applies; raise the limit, lower the cap, or leave resumeBufferBytes null to derive it from the limit" (int64 $cap) $edge.memoryHeadroom $limit) }}
{{- end }}
{{- end }}
{{- if not (kindIs "invalid" $cap) }}{{ $cap | int64 }}{{ end }}
{{- end }}
