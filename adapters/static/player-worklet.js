// Streaming pcm16 player: plays 24 kHz deltas back to back at the AudioContext's own rate.
//
// Why a worklet: it runs on the audio thread, so playback never stalls when the page is busy, and it knows
// exactly how many samples reached the speakers (the `played_ms` of a barge-in comes from here, not from a
// wall clock). Resampling keeps one fractional read position across deltas, so chunk boundaries are
// seamless (no clicks); a small jitter buffer absorbs network gaps before playback starts.

const SOURCE_RATE = 24000;

class PcmPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const jitterMs = options?.processorOptions?.jitterMs ?? 60;
    this.jitterSamples = Math.round((SOURCE_RATE * jitterMs) / 1000);
    this.step = SOURCE_RATE / sampleRate; // source samples per output sample
    this.stoppedTurnId = null;
    this.reset(null);
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  reset(turnId) {
    this.turnId = turnId;
    this.chunks = []; // Float32Array pieces at 24 kHz, oldest first
    this.chunkOffset = 0; // index of the next unread sample in chunks[0]
    this.buffered = 0; // samples queued and not yet played
    this.position = 0; // fractional read position between `previous` and the next queued sample
    this.previous = 0; // last sample consumed, the left side of the interpolation
    this.played = 0; // source samples consumed, i.e. heard
    this.received = 0;
    this.started = false;
    this.ended = false;
    this.reportedDrained = false;
    this.sinceReport = 0;
  }

  onMessage(message) {
    if (message.type === "audio") {
      if (message.turnId === this.stoppedTurnId) return; // deltas still in flight after a barge-in
      if (message.turnId !== this.turnId) this.reset(message.turnId);
      const pcm = new Int16Array(message.pcm);
      const floats = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) floats[i] = pcm[i] / 32768;
      this.chunks.push(floats);
      this.buffered += floats.length;
      this.received += floats.length;
    } else if (message.type === "end") {
      if (message.turnId === this.turnId) this.ended = true;
    } else if (message.type === "stop") {
      // Barge-in: drop what is queued at once and say exactly how much was heard.
      const turnId = this.turnId;
      const played = this.played;
      this.stoppedTurnId = turnId;
      this.reset(null);
      this.port.postMessage({ type: "stopped", turnId, playedSamples: played });
    }
  }

  nextSample() {
    while (this.chunks.length && this.chunkOffset >= this.chunks[0].length) {
      this.chunks.shift();
      this.chunkOffset = 0;
    }
    if (!this.chunks.length) return null;
    this.buffered -= 1;
    this.played += 1;
    return this.chunks[0][this.chunkOffset++];
  }

  process(_inputs, outputs) {
    const output = outputs[0];
    const channel = output[0];
    if (!this.started && (this.buffered >= this.jitterSamples || (this.ended && this.buffered > 0))) {
      this.started = true;
    }
    for (let i = 0; i < channel.length; i++) {
      if (!this.started || this.buffered <= 0) {
        channel[i] = 0;
        continue;
      }
      // Linear interpolation between the last consumed sample and the next queued one.
      const next = this.peek();
      channel[i] = this.previous + (next - this.previous) * this.position;
      this.position += this.step;
      while (this.position >= 1) {
        this.position -= 1;
        const sample = this.nextSample();
        if (sample === null) break;
        this.previous = sample;
      }
    }
    for (let c = 1; c < output.length; c++) output[c].set(channel);
    this.report(channel.length);
    return true;
  }

  peek() {
    let index = 0;
    let offset = this.chunkOffset;
    while (index < this.chunks.length && offset >= this.chunks[index].length) {
      index += 1;
      offset = 0;
    }
    return index < this.chunks.length ? this.chunks[index][offset] : this.previous;
  }

  report(frames) {
    this.sinceReport += frames;
    const drained = this.started && this.ended && this.buffered <= 0;
    if (this.sinceReport >= sampleRate / 50 || (drained && !this.reportedDrained)) {
      this.sinceReport = 0;
      this.port.postMessage({
        type: "played",
        turnId: this.turnId,
        playedSamples: this.played,
        receivedSamples: this.received,
        drained,
      });
      if (drained) this.reportedDrained = true;
    }
  }
}

registerProcessor("pcm-player", PcmPlayer);
