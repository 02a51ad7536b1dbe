{{/* The state store: Redis, external (a URL in a Secret) or internal (a StatefulSet of one). */}}

{{- define "audiochat.redis.name" -}}
{{- printf "%s-redis" (include "audiochat.fullname" .) }}
{{- end }}

{{/* The chart creates the Redis Secret for an inline external URL and for the internal Redis. */}}
{{- define "audiochat.redis.createsSecret" -}}
{{- $redis := .Values.redis }}
{{- if or (eq $redis.mode "internal") (and (eq $redis.mode "external") (not $redis.external.existingSecret)) }}true{{ end }}
{{- end }}

{{/* The Secret, and the key in it, that hold AUDIOCHAT_REDIS_URL. */}}
{{- define "audiochat.redis.urlSecretName" -}}
{{- $redis := .Values.redis }}
{{- if and (eq $redis.mode "external") $redis.external.existingSecret }}
{{- $redis.external.existingSecret }}
{{- else }}
{{- include "audiochat.redis.name" . }}
{{- end }}
{{- end }}

{{- define "audiochat.redis.urlSecretKey" -}}
{{- if eq .Values.redis.mode "external" }}{{ .Values.redis.external.existingSecretKey }}{{ else }}redis-url{{ end }}
{{- end }}

{{/* Both workloads read the store's URL from the Secret; nothing when there is no store. */}}
{{- define "audiochat.redis.env" -}}
{{- if ne .Values.redis.mode "none" -}}
- name: AUDIOCHAT_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "audiochat.redis.urlSecretName" . }}
      key: {{ include "audiochat.redis.urlSecretKey" . }}
- name: AUDIOCHAT_REDIS_UNAVAILABLE
  value: {{ .Values.redis.unavailable | quote }}
- name: AUDIOCHAT_REDIS_TIMEOUT_SECONDS
  value: {{ .Values.redis.timeoutSeconds | toString | quote }}
{{- end }}
{{- end }}

{{/*
The internal Redis' password: the value, else the one already in the cluster's Secret (so an upgrade keeps
it), else a new random one. `lookup` finds nothing offline (helm template), so each render makes a new one.
*/}}
{{- define "audiochat.redis.password" -}}
{{- $internal := .Values.redis.internal }}
{{- if $internal.password }}
{{- $internal.password }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "audiochat.redis.name" .) }}
{{- if and $existing (hasKey ($existing.data | default dict) "redis-password") }}
{{- index $existing.data "redis-password" | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}
{{- end }}

{{- define "audiochat.redis.validate" -}}
{{- $redis := .Values.redis }}
{{- $external := $redis.external }}
{{- if and $external.url $external.existingSecret }}
{{- fail "set either redis.external.url or redis.external.existingSecret, not both" }}
{{- end }}
{{- if eq $redis.mode "external" }}
{{- if not (or $external.url $external.existingSecret) }}
{{- fail "redis.mode=external needs redis.external.existingSecret (or redis.external.url)" }}
{{- end }}
{{- else if or $external.url $external.existingSecret }}
{{- fail (printf "redis.external.* is set but redis.mode is %q: set redis.mode=external to use it" $redis.mode) }}
{{- end }}
{{- if eq $redis.mode "internal" }}
{{- $internal := $redis.internal }}
{{- $limit := dig "limits" "memory" "" $internal.resources }}
{{- if not $limit }}
{{- fail "redis.internal.resources.limits.memory is required: redis.internal.maxMemory is checked against it" }}
{{- end }}
{{- $limitBytes := include "audiochat.bytes" (dict "quantity" $limit "name" "redis.internal.resources.limits.memory") | int64 }}
{{- $maxBytes := include "audiochat.bytes" (dict "quantity" $internal.maxMemory "name" "redis.internal.maxMemory") | int64 }}
{{- if gt (mul $maxBytes 4) (mul $limitBytes 3) }}
{{- fail (printf "redis.internal.maxMemory (%s) is over 3/4 of redis.internal.resources.limits.memory (%s): Redis needs room beyond its data for buffers and the fork that saves it, or the pod is OOM-killed before Redis refuses writes" $internal.maxMemory $limit) }}
{{- end }}
{{- end }}
{{- end }}
