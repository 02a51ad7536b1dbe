{{/*
A `helm test` pod that runs a Python check from the application image (so no extra image is pulled).
The argument is (dict "root" $ "name" "core-health" "script" "..." "args" (list ...)), and optionally "env"
(a list of EnvVar objects).
*/}}
{{- define "audiochat.testPod" -}}
{{- $root := .root }}
apiVersion: v1
kind: Pod
metadata:
  name: {{ printf "%s-test-%s" (include "audiochat.fullname" $root) .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "audiochat.labels" $root | nindent 4 }}
    {{- include "audiochat.coreClientLabel" $root | nindent 4 }}
    app.kubernetes.io/component: test
  annotations:
    helm.sh/hook: test
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ .name }}
      image: {{ include "audiochat.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command:
        - python
        - -c
        - {{ .script | quote }}
        {{- range .args }}
        - {{ . | quote }}
        {{- end }}
      {{- with .env }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml $root.Values.tests.resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
{{- end }}
