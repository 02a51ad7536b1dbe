{{/* The edge's container specifics; the argument is the component context (see deployment.yaml). */}}

{{- define "audiochat.edge.args" -}}
- serve
- --role
- edge
- --target
- {{ include "audiochat.coreTarget" .root }}
{{- end }}

{{- define "audiochat.edge.ports" -}}
- name: http
  containerPort: {{ .values.ports.http | int64 }}
  protocol: TCP
{{- end }}

{{- define "audiochat.edge.metricsPort" -}}
{{ .values.ports.http | int64 }}
{{- end }}

{{/* /readyz is ready only while the core answers SERVING, so an edge without a core takes no traffic. */}}
{{- define "audiochat.edge.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  {{- toYaml .values.startupProbe | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  {{- toYaml .values.livenessProbe | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  {{- toYaml .values.readinessProbe | nindent 2 }}
{{- end }}

{{- define "audiochat.edge.env" -}}
- name: AUDIOCHAT_HTTP_PORT
  value: {{ .values.ports.http | int64 | quote }}
- name: AUDIOCHAT_RESUME_SECONDS
  value: {{ .values.resumeSeconds | int64 | quote }}
{{- with .values.allowedOrigins }}
- name: AUDIOCHAT_ALLOWED_ORIGINS
  value: {{ join "," . | quote }}
{{- end }}
{{- with .values.maxBodyBytes }}
- name: AUDIOCHAT_MAX_BODY_BYTES
  value: {{ . | int64 | quote }}
{{- end }}
{{- with .values.sseOrphanSeconds }}
- name: AUDIOCHAT_SSE_ORPHAN_SECONDS
  value: {{ . | int64 | quote }}
{{- end }}
{{- with .values.sseTurnBufferBytes }}
- name: AUDIOCHAT_SSE_TURN_BUFFER_BYTES
  value: {{ . | int64 | quote }}
{{- end }}
{{- with include "audiochat.edge.resumeBufferBytes" .root }}
- name: AUDIOCHAT_RESUME_BUFFER_BYTES
  value: {{ . | quote }}
{{- end }}
{{- if or .values.apiKeys .values.existingApiKeysSecret }}
- name: AUDIOCHAT_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ .values.existingApiKeysSecret | default (include "audiochat.secretName" .root) }}
      key: {{ .values.existingApiKeysSecretKey }}
{{- end }}
{{- end }}
