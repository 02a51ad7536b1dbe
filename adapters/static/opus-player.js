// Plays an Ogg Opus answer (output_audio "opus") through WebCodecs: the Ogg pages that arrive in the
// WebSocket's binary frames are split into Opus packets, decoded by the browser's AudioDecoder, and handed
// on as 24 kHz mono Int16 pcm, so the page's player and its played-samples count work as for pcm16.

// A 31-tap Blackman-windowed sinc, cut-off at a quarter of 48 kHz: keeps speech up to about 11 kHz.
const HALF_BAND = (() => {
  const taps = 31;
  const middle = (taps - 1) / 2;
  const h = [];
  for (let n = 0; n < taps; n++) {
    const x = n - middle;
    const sinc = x === 0 ? 0.5 : Math.sin(Math.PI * x / 2) / (Math.PI * x);
    const taper = 0.42 - 0.5 * Math.cos((2 * Math.PI * n) / (taps - 1)) + 0.08 * Math.cos((4 * Math.PI * n) / (taps - 1));
    h.push(sinc * taper);
  }
  const gain = h.reduce((a, b) => a + b, 0);
  return Float32Array.from(h.map((v) => v / gain));
})();

export function opusPlaybackSupported() {
  return typeof window.AudioDecoder === "function" && window.isSecureContext;
}

export class OggOpusDecoder {
  // onPcm(Int16Array) receives 24 kHz mono samples in order; onError(Error) once if the stream is bad.
  constructor(onPcm, onError) {
    this.onPcm = onPcm;
    this.onError = onError;
    this.buffer = new Uint8Array(0); // bytes of a page not complete yet
    this.segments = []; // pieces of a packet that continues on the next page
    this.packets = 0;
    this.decoder = null;
    this.timestamp = 0;
    this.history = new Float32Array(HALF_BAND.length - 1); // the filter's last inputs, across outputs
    this.phase = 0; // whether the next 48 kHz sample is dropped by the 2:1 decimation
  }

  push(bytes) {
    const joined = new Uint8Array(this.buffer.length + bytes.length);
    joined.set(this.buffer);
    joined.set(bytes, this.buffer.length);
    let pos = 0;
    while (pos + 27 <= joined.length) {
      if (joined[pos] !== 0x4f || joined[pos + 1] !== 0x67 || joined[pos + 2] !== 0x67 || joined[pos + 3] !== 0x53) {
        this.fail(new Error("the answer is not an Ogg stream"));
        return;
      }
      const count = joined[pos + 26];
      const table = joined.subarray(pos + 27, pos + 27 + count);
      const bodyLength = table.reduce((sum, length) => sum + length, 0);
      const end = pos + 27 + count + bodyLength;
      if (table.length < count || end > joined.length) break; // the rest of the page is in a later frame
      let body = pos + 27 + count;
      for (const length of table) {
        this.segments.push(joined.subarray(body, body + length));
        body += length;
        if (length < 255) this.packet(concat(this.segments));
      }
      pos = end;
    }
    this.buffer = joined.slice(pos);
  }

  packet(data) {
    this.segments = [];
    const index = this.packets++;
    if (index === 0) {
      this.decoder = new AudioDecoder({ output: (audioData) => this.output(audioData), error: (e) => this.fail(e) });
      this.decoder.configure({ codec: "opus", sampleRate: 24000, numberOfChannels: 1, description: data });
      return;
    }
    if (index === 1 || !this.decoder) return; // OpusTags
    this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: this.timestamp, data }));
    this.timestamp += 20000;
  }

  output(audioData) {
    const frames = audioData.numberOfFrames;
    const samples = new Float32Array(frames);
    audioData.copyTo(samples, { planeIndex: 0, format: "f32-planar" });
    const rate = audioData.sampleRate;
    audioData.close();
    this.onPcm(toInt16(rate === 24000 ? samples : this.decimate(samples)));
  }

  // 48 kHz to 24 kHz: a half-band low-pass, then every other sample (the decoder keeps its own 48 kHz).
  decimate(samples) {
    const taps = HALF_BAND.length;
    const input = new Float32Array(this.history.length + samples.length);
    input.set(this.history);
    input.set(samples, this.history.length);
    const out = [];
    for (let n = this.history.length; n < input.length; n++) {
      if (this.phase === 0) {
        let sum = 0;
        for (let k = 0; k < taps; k++) sum += HALF_BAND[k] * input[n - k];
        out.push(sum);
      }
      this.phase ^= 1;
    }
    this.history = input.slice(input.length - this.history.length);
    return Float32Array.from(out);
  }

  async flush() {
    if (this.decoder && this.decoder.state === "configured") await this.decoder.flush();
  }

  close() {
    if (this.decoder && this.decoder.state !== "closed") this.decoder.close();
  }

  fail(error) {
    this.close();
    if (this.onError) this.onError(error);
    this.onError = null;
  }
}

function concat(pieces) {
  const out = new Uint8Array(pieces.reduce((sum, piece) => sum + piece.length, 0));
  let offset = 0;
  for (const piece of pieces) {
    out.set(piece, offset);
    offset += piece.length;
  }
  return out;
}

function toInt16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) out[i] = Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32768)));
  return out;
}
