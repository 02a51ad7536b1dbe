"""Voice activity detection on streamed user audio: where speech starts and stops (server VAD)."""
