{{/* The core's container specifics; the argument is the component context (see deployment.yaml). */}}

{{- define "audiochat.core.args" -}}
- serve
- --role
- core
{{- end }}

{{- define "audiochat.core.ports" -}}
- name: grpc
  containerPort: {{ .values.ports.grpc | int64 }}
  protocol: TCP
- name: metrics
  containerPort: {{ .values.ports.metrics | int64 }}
  protocol: TCP
{{- end }}

{{- define "audiochat.core.metricsPort" -}}
{{ .values.ports.metrics | int64 }}
{{- end }}

{{/* Native gRPC probes (grpc.health.v1); the port must be a number. Liveness asks for the server as a
whole (""), readiness for the service itself, which turns NOT_SERVING as soon as draining starts. */}}
{{- define "audiochat.core.probes" -}}
startupProbe:
  grpc:
    port: {{ .values.ports.grpc | int64 }}
  {{- toYaml .values.startupProbe | nindent 2 }}
livenessProbe:
  grpc:
    port: {{ .values.ports.grpc | int64 }}
  {{- toYaml .values.livenessProbe | nindent 2 }}
readinessProbe:
  grpc:
    port: {{ .values.ports.grpc | int64 }}
    service: audiochat.v1.AudioChatService
  {{- toYaml .values.readinessProbe | nindent 2 }}
{{- end }}

{{- define "audiochat.core.env" -}}
{{- $openai := .root.Values.openai -}}
- name: AUDIOCHAT_GRPC_PORT
  value: {{ .values.ports.grpc | int64 | quote }}
- name: AUDIOCHAT_METRICS_PORT
  value: {{ .values.ports.metrics | int64 | quote }}
- name: AUDIOCHAT_MAX_CONNECTION_AGE_SECONDS
  value: {{ .values.maxConnectionAgeSeconds | int64 | quote }}
- name: AUDIOCHAT_UPSTREAM_TIMEOUT_SECONDS
  value: {{ .values.upstreamTimeoutSeconds | int64 | quote }}
{{- /* The core decodes the user's audio, so it is the one that enforces the limit (edge and all roles alike). */}}
{{- with .values.maxTurnAudioSeconds }}
- name: AUDIOCHAT_MAX_TURN_AUDIO_SECONDS
  value: {{ . | int64 | quote }}
{{- end }}
{{- $conversations := .values.conversations }}
{{- range $name, $key := dict "AUDIOCHAT_CONVERSATION_TTL_SECONDS" "ttlSeconds" "AUDIOCHAT_CONVERSATION_ORPHAN_SECONDS" "orphanSeconds" "AUDIOCHAT_CONVERSATION_TURN_LOG_BYTES" "turnLogBytes" "AUDIOCHAT_MAX_STORED_CONVERSATIONS" "maxStored" "AUDIOCHAT_MAX_STORED_CONVERSATION_BYTES" "maxStoredBytes" }}
{{- $value := index $conversations $key }}
{{- if not (kindIs "invalid" $value) }}
- name: {{ $name }}
  value: {{ $value | int64 | quote }}
{{- end }}
{{- end }}
{{- with .root.Values.config.upstream }}
- name: AUDIOCHAT_UPSTREAM
  value: {{ . | quote }}
{{- end }}
{{- with .root.Values.config.realtimeModels }}
- name: AUDIOCHAT_REALTIME_MODELS
  value: {{ join "," . | quote }}
{{- end }}
{{- with .root.Values.config.chatCompletionsModels }}
- name: AUDIOCHAT_CHAT_COMPLETIONS_MODELS
  value: {{ join "," . | quote }}
{{- end }}
{{- with $openai.baseUrl }}
- name: OPENAI_BASE_URL
  value: {{ . | quote }}
{{- end }}
{{- if or $openai.apiKey $openai.existingSecret }}
- name: OPENAI_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $openai.existingSecret | default (include "audiochat.secretName" .root) }}
      key: {{ $openai.existingSecretKey }}
{{- end }}
{{- end }}
