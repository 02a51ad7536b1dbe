// Microphone capture: the context's rate in, 24 kHz pcm16 frames out (the rate the model speaks).
//
// A box filter as wide as the decimation ratio removes most of what would alias, which is enough for
// speech; frames of 20 ms keep the socket busy without many tiny messages.

const TARGET_RATE = 24000;
const FRAME_SAMPLES = 480; // 20 ms at 24 kHz

class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.position = 0;
    this.history = new Float32Array(Math.max(1, Math.ceil(this.step)));
    this.historyIndex = 0;
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.frameLength = 0;
    this.recording = false;
    this.port.onmessage = (event) => {
      if (event.data.type === "start") {
        this.recording = true;
        this.frameLength = 0;
      } else if (event.data.type === "stop") {
        this.flush();
        this.recording = false;
        this.port.postMessage({ type: "stopped" });
      }
    };
  }

  flush() {
    if (this.frameLength > 0) {
      const pcm = this.frame.slice(0, this.frameLength);
      // The frame's RMS (0..1 of full scale) for the page's input level meter.
      let energy = 0;
      for (let i = 0; i < pcm.length; i++) energy += pcm[i] * pcm[i];
      const level = Math.sqrt(energy / pcm.length) / 32768;
      this.port.postMessage({ type: "pcm", pcm: pcm.buffer, level }, [pcm.buffer]);
      this.frameLength = 0;
    }
  }

  process(inputs) {
    const input = inputs[0];
    if (!this.recording || !input || !input.length) return true;
    const channel = input[0];
    const width = this.history.length;
    for (let i = 0; i < channel.length; i++) {
      this.history[this.historyIndex] = channel[i];
      this.historyIndex = (this.historyIndex + 1) % width;
      this.position += 1;
      if (this.position >= this.step) {
        this.position -= this.step;
        let sum = 0;
        for (let k = 0; k < width; k++) sum += this.history[k];
        const value = Math.max(-1, Math.min(1, sum / width));
        this.frame[this.frameLength++] = value < 0 ? value * 32768 : value * 32767;
        if (this.frameLength === FRAME_SAMPLES) this.flush();
      }
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
