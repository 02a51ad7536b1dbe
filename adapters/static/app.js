// The audiochat web page: push-to-talk or hands-free (server VAD) over the /v1/converse WebSocket
// (adapters/PROTOCOL.md), with the answer played while it streams and barge-in, by button or by voice,
// that reports exactly how much the listener heard.

import { OggOpusDecoder, opusPlaybackSupported } from "./opus-player.js";

const SOURCE_RATE = 24000;
const SAMPLES_PER_MS = SOURCE_RATE / 1000;
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000, 8000];
// Tools the page offers and runs itself, so a tool call can be seen end to end ("what does get time say?").
const PAGE_TOOLS = {
  get_time: {
    description: "The current time where the listener is.",
    parameters: { type: "object", properties: {} },
    run: () => new Date().toLocaleTimeString(),
  },
};

const $ = (id) => document.getElementById(id);
const ui = {
  chat: $("chat"), hint: $("hint"), status: $("status"), dot: $("status-dot"), error: $("error"),
  talk: $("talk"), textForm: $("text-form"), text: $("text"), settings: $("settings"),
  settingsToggle: $("settings-toggle"), voice: $("voice"), instructions: $("instructions"),
  server: $("server"), apiKey: $("api-key"), opusAnswers: $("opus-answers"), handsFree: $("hands-free"), voiceState: $("voice-state"),
  stateLabel: $("state-label"), levelBar: $("level-bar"),
};

// Counters the browser tests read; also handy in the console.
const test = {
  connected: false, conversations: 0, reconnects: 0, resumed: 0, capturedSamples: 0, turns: {}, lastStop: null, errors: [],
  handsFree: false, speech: [], voiceState: "off", peakLevel: 0, keyRefused: false,
  toolCalls: [],
};
window.audiochatTest = test;
// For the browser tests: the connection drops as a phone's does when it changes networks.
test.drop = () => socket?.close(4000, "dropped by the test");

let socket = null;
let reconnectAttempt = 0;
// The server refused this page for its API key (none, or a wrong one): nothing but a new key will help.
let keyRefused = false;
let audio = null; // {context, player, capture, micStream}
let recording = null; // {pcm: Int16Array[], samples}
let pendingTurnSentAt = null;
let handsFree = false; // server VAD: the microphone streams all the time and the service finds the turns
let userSpeaking = false;
const turns = new Map(); // turn_index -> turn state
// Resume after a dropped connection: the conversation, and the last turn event received (turn_id, sequence).
let conversationId = null;
let lastSeen = { turnId: "", sequence: 0 };
let resumeRefused = false; // the server no longer has the conversation: the next connection starts a new one
let takenOver = false; // another connection resumed this conversation: this page stops
let playIds = 0; // the player's id for each turn: stable when a resume gives the turn a new index

// ---------- connection ----------

function serverUrl() {
  const base = ui.server.value.trim() || window.location.origin;
  const url = new URL("/v1/converse", base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

function connect() {
  const protocols = ["audiochat.v1"];
  // The key goes in an `auth` message, not the handshake: a wrong key then gets an answer the page can
  // explain (a refused handshake looks the same as a server that is down).
  const key = ui.apiKey.value.trim();
  setStatus("connecting…", false);
  let ws;
  try {
    ws = new WebSocket(serverUrl(), protocols);
  } catch (error) {
    showError(`The server address is not valid: ${error.message}`);
    return;
  }
  ws.binaryType = "arraybuffer";
  socket = ws;
  ws.onopen = () => {
    if (key) ws.send(JSON.stringify({ type: "auth", token: key }));
    if (conversationId) {
      // The same conversation, on whichever server answers: its history, and the rest of a streaming answer.
      ws.send(JSON.stringify({
        type: "resume", conversation_id: conversationId, turn_id: lastSeen.turnId, sequence: lastSeen.sequence,
        input_audio: { encoding: "pcm16", sample_rate_hz: SOURCE_RATE },
      }));
      return;
    }
    // resume_grace_ms: an answer streaming when the socket drops goes on for 10 s, so the resume after a
    // reconnect plays the rest instead of reporting it cut.
    const config = {
      type: "config",
      input_audio: { encoding: "pcm16", sample_rate_hz: SOURCE_RATE },
      resume_grace_ms: 10000,
    };
    if (handsFree) config.turn_detection = { type: "server_vad" };
    // Opus answers: about 35 kbit/s instead of pcm16's 384, decoded here by WebCodecs.
    if (ui.opusAnswers.checked && opusPlaybackSupported()) config.output_audio = "opus";
    if (ui.voice.value.trim()) config.voice = ui.voice.value.trim();
    if (ui.instructions.value.trim()) config.instructions = ui.instructions.value.trim();
    config.tools = Object.entries(PAGE_TOOLS).map(([name, tool]) => (
      { type: "function", function: { name, description: tool.description, parameters: tool.parameters } }
    ));
    ws.send(JSON.stringify(config));
  };
  ws.onmessage = ({ data }) => (typeof data === "string" ? onEvent(JSON.parse(data)) : onAudio(data));
  ws.onclose = (event) => onClose(ws, event);
}

function onClose(ws, event) {
  if (socket !== ws) return; // replaced on purpose (settings changed)
  socket = null;
  test.connected = false;
  if (!conversationId) loseTurns(); // else a resume brings the rest of the answer; what was received plays on
  if (keyRefused) return; // already said, and reconnecting with the same key would be refused again
  if (resumeRefused) {
    resumeRefused = false;
    connect(); // a new conversation at once
    return;
  }
  if (takenOver) {
    showError("This conversation continues in another window or device.");
    setStatus("taken over", false);
    return;
  }
  if (event.code === 1008) {
    showError(`The server refused the connection: ${event.reason || "not allowed"}.`);
    setStatus("refused", false);
    return;
  }
  const delay = RECONNECT_DELAYS_MS[Math.min(reconnectAttempt, RECONNECT_DELAYS_MS.length - 1)];
  reconnectAttempt += 1;
  setStatus(`connection lost, reconnecting in ${Math.round(delay / 100) / 10} s…`, false);
  if (event.code !== 1000 && event.code !== 1012) showError("Connection lost. Reconnecting…");
  setTimeout(() => {
    test.reconnects += 1;
    connect();
  }, delay);
}

function loseTurns() {
  stopPlayback(false);
  for (const turn of turns.values()) if (!turn.done) finishTurn(turn, { reason: "error", error: { message: "connection lost" } });
}

// A new connection on purpose (settings or turn detection changed): the old one closes without a retry,
// and a new conversation starts (its config changed).
function reconnectNow() {
  const old = socket;
  socket = null;
  old?.close(1000);
  conversationId = null;
  loseTurns();
  reconnectAttempt = 0;
  connect();
}

function send(message) {
  if (keyRefused) {
    askForKey();
    return false;
  }
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    showError("Not connected to the server yet. Wait a moment and try again.");
    return false;
  }
  socket.send(typeof message === "string" || message instanceof ArrayBuffer ? message : JSON.stringify(message));
  return true;
}

// ---------- events from the server ----------

function onEvent(event) {
  if (event.turn_id) lastSeen = { turnId: event.turn_id, sequence: event.sequence };
  switch (event.type) {
    case "conversation.started":
      // Turn indexes count per connection: they start again at 1, the answer a resume continues included.
      if (event.resumed) {
        test.resumed += 1;
        adoptUnfinishedTurn();
      } else {
        turns.clear();
        test.turns = {};
        lastSeen = { turnId: "", sequence: 0 };
      }
      conversationId = event.resumable ? event.conversation_id : null;
      reconnectAttempt = 0;
      test.connected = true;
      test.conversations += 1;
      hideError();
      setStatus(handsFree ? "ready, hands-free" : "ready", true);
      updateVoiceState();
      break;
    case "speech.started":
      test.speech.push({ type: event.type, ms: event.audio_start_ms, at: performance.now() });
      userSpeaking = true;
      bargeInByVoice();
      updateVoiceState();
      break;
    case "speech.stopped":
      test.speech.push({ type: event.type, ms: event.audio_end_ms, at: performance.now() });
      userSpeaking = false;
      pendingTurnSentAt = performance.now();
      addSpokenNote(event.audio_end_ms - (test.speech.at(-2)?.ms ?? event.audio_end_ms));
      updateVoiceState();
      break;
    case "turn.started": {
      const turn = turnFor(event.turn_index, event.turn_id);
      turn.turnId = event.turn_id;
      turn.inputAudioMs = event.input_audio_ms;
      turn.encoding = event.audio_format?.encoding ?? "pcm16";
      test.turns[event.turn_index].inputAudioMs = event.input_audio_ms;
      test.turns[event.turn_index].encoding = turn.encoding;
      break;
    }
    case "text.delta":
      appendText(turnFor(event.turn_index, event.turn_id), event.text);
      break;
    case "turn.completed": {
      // An Opus answer's last frames may still be in the decoder: the turn ends once they are played out.
      const turn = turnFor(event.turn_index, event.turn_id);
      const finish = () => {
        finishTurn(turn, event);
        for (const call of event.tool_calls ?? []) runTool(call);
        updateVoiceState();
      };
      if (turn.opus) turn.opus.flush().finally(() => turn.opus.close()).then(finish);
      else finish();
      break;
    }
    case "error":
      test.errors.push(event);
      if (event.code === "not_found" || event.code === "permission_denied") {
        // The conversation expired or is on a server that lost it: the next connection starts a new one.
        conversationId = null;
        resumeRefused = true;
        loseTurns();
      } else if (event.code === "aborted") {
        takenOver = true;
        conversationId = null;
        loseTurns();
      } else if (event.code === "unauthenticated") askForKey();
      else showError(event.message || "The server reported an error.");
      break;
    default:
      break; // usage and future events need nothing on this page
  }
}

function onAudio(buffer) {
  const view = new DataView(buffer);
  const turnIndex = view.getUint32(0, true);
  const turn = turnFor(turnIndex);
  lastSeen = { turnId: turn.turnId ?? lastSeen.turnId, sequence: view.getUint32(4, true) };
  if (turn.stopped) return; // in flight when the listener talked over it
  if (turn.encoding !== "opus") {
    playPcm(turn, buffer.slice(16));
    return;
  }
  // The frames are the pieces of one Ogg Opus file (header first); decoded pcm is played like pcm16's.
  turn.opus ??= new OggOpusDecoder(
    (pcm) => {
      if (!turn.stopped) playPcm(turn, pcm.buffer);
    },
    (error) => showError(`This browser could not decode the Opus answer: ${error.message}`),
  );
  turn.opus.push(new Uint8Array(buffer, 16));
}

function playPcm(turn, pcm) {
  const turnIndex = turn.index;
  const samples = pcm.byteLength / 2;
  if (turn.firstAudioAt === null) {
    turn.firstAudioAt = performance.now();
    test.turns[turnIndex].timeToFirstAudioMs = Math.round(turn.firstAudioAt - turn.sentAt);
  }
  turn.pcm.push(new Int16Array(pcm.slice(0)));
  turn.receivedSamples += samples;
  test.turns[turnIndex].receivedSamples = turn.receivedSamples;
  ensureAudio().then(({ player }) => {
    player.port.postMessage({ type: "audio", turnId: turn.playId, pcm }, [pcm]);
    turn.playing = true;
  });
}

// After a resume the answer that was streaming comes back as the new connection's first turn.
function adoptUnfinishedTurn() {
  const unfinished = [...turns.values()].find((turn) => !turn.done);
  const records = test.turns;
  turns.clear();
  test.turns = {};
  if (!unfinished) return;
  test.turns[1] = records[unfinished.index];
  unfinished.index = 1;
  turns.set(1, unfinished);
}

function turnFor(index, turnId = null) {
  let turn = turns.get(index);
  if (turn && turnId && turn.turnId && turn.turnId !== turnId) {
    // Not the answer the page was waiting for (that one ended while the connection was down).
    finishTurn(turn, { reason: "error", error: { message: "connection lost" } });
    turn = null;
  }
  if (!turn) {
    turn = {
      index, turnId, playId: ++playIds, text: "", pcm: [], receivedSamples: 0, playedSamples: 0, firstAudioAt: null,
      sentAt: pendingTurnSentAt ?? performance.now(), done: false, stopped: false, playing: false,
      bubble: addBubble("assistant", ""),
    };
    pendingTurnSentAt = null;
    turns.set(index, turn);
    test.turns[index] = { receivedSamples: 0, playedSamples: 0, reason: null, playedMs: null };
  }
  return turn;
}

function appendText(turn, text) {
  turn.text += text;
  turn.bubble.querySelector(".text").textContent = turn.text;
  scrollDown();
}

function finishTurn(turn, event) {
  turn.done = true;
  const record = test.turns[turn.index];
  record.reason = event.reason;
  record.playedMs = event.played_ms ?? null;
  record.audioSamples = event.audio_samples ?? 0;
  const seconds = (performance.now() - turn.sentAt) / 1000;
  const meta = turn.bubble.querySelector(".meta");
  if (event.reason === "error") {
    turn.bubble.classList.add("error-turn");
    meta.append(span(`failed: ${event.error?.message ?? "unknown error"}`));
  } else if (event.reason === "interrupted") {
    markCut(turn, event.played_ms ?? 0);
  }
  if (turn.firstAudioAt !== null) meta.append(span(`first audio ${Math.round(turn.firstAudioAt - turn.sentAt)} ms`));
  meta.append(span(`done in ${seconds.toFixed(1)} s`)); // from sending to the last event, not the audio's length
  if (turn.receivedSamples) meta.append(downloadLink(turn));
  if (audio && !turn.stopped) audio.player.port.postMessage({ type: "end", turnId: turn.playId });
}

function markCut(turn, playedMs) {
  // Show the answer cut where the listener cut it: the heard part, then the rest struck through.
  const total = turn.receivedSamples / SAMPLES_PER_MS;
  let cut = total > 0 ? Math.round((turn.text.length * Math.min(playedMs, total)) / total) : 0;
  const space = turn.text.lastIndexOf(" ", cut);
  if (cut < turn.text.length && space > 0) cut = space; // at a word boundary, as the service cuts its history
  const text = turn.bubble.querySelector(".text");
  text.textContent = turn.text.slice(0, cut);
  const rest = document.createElement("span");
  rest.className = "cut";
  rest.textContent = turn.text.slice(cut);
  text.append(rest);
  turn.bubble.querySelector(".meta").append(span(`interrupted at ${(playedMs / 1000).toFixed(1)} s`));
}

// ---------- audio ----------

async function ensureAudio() {
  if (audio) return audio;
  const context = new AudioContext({ latencyHint: "interactive" });
  await Promise.all([
    context.audioWorklet.addModule("static/player-worklet.js"),
    context.audioWorklet.addModule("static/capture-worklet.js"),
  ]);
  const player = new AudioWorkletNode(context, "pcm-player", { outputChannelCount: [1], processorOptions: { jitterMs: 60 } });
  player.connect(context.destination);
  player.port.onmessage = ({ data }) => onPlayerMessage(data);
  audio = { context, player, capture: null, micStream: null, stopWaiters: [] };
  if (context.state === "suspended") await context.resume();
  return audio;
}

function onPlayerMessage(message) {
  if (message.type === "played" && message.turnId !== null) {
    const turn = [...turns.values()].find((candidate) => candidate.playId === message.turnId);
    if (turn) {
      turn.playedSamples = message.playedSamples;
      test.turns[turn.index].playedSamples = message.playedSamples;
      if (message.drained) {
        turn.playing = false;
        updateVoiceState();
      }
    }
  } else if (message.type === "stopped") {
    const waiter = audio.stopWaiters.shift();
    if (waiter) waiter(message);
  }
}

function playing() {
  for (const turn of turns.values()) if (!turn.stopped && (turn.playing || !turn.done)) return turn;
  return null;
}

// Barge-in: stop playback at once, then tell the service how much was actually heard.
async function stopPlayback(notifyServer = true) {
  const turn = playing();
  if (!turn || !audio) {
    if (turn && notifyServer) send({ type: "interrupt", played_ms: 0 });
    if (turn) turn.stopped = true;
    return;
  }
  turn.stopped = true;
  const stopped = await new Promise((resolve) => {
    audio.stopWaiters.push(resolve);
    audio.player.port.postMessage({ type: "stop" });
  });
  const playedSamples = stopped.turnId === turn.playId ? stopped.playedSamples : turn.playedSamples;
  turn.playedSamples = playedSamples;
  turn.playing = false;
  const playedMs = Math.floor(playedSamples / SAMPLES_PER_MS);
  test.lastStop = { turnIndex: turn.index, playedSamples, playedMs, at: performance.now() };
  test.turns[turn.index].playedSamples = playedSamples;
  if (notifyServer) send({ type: "interrupt", played_ms: playedMs });
  if (turn.done && turn.receivedSamples / SAMPLES_PER_MS > playedMs) markCut(turn, playedMs);
}

// The service heard the user talk: it has stopped the answer; stop playing it and say how much was heard.
function bargeInByVoice() {
  if (playing()) {
    stopPlayback(true);
    return;
  }
  // Played to the end already: say so, in case the service's estimate thought it was still playing.
  const last = [...turns.values()].at(-1);
  if (last && last.receivedSamples && !last.stopped) {
    send({ type: "interrupt", played_ms: Math.floor(last.playedSamples / SAMPLES_PER_MS) });
  }
}

async function openMicrophone() {
  const { context } = await ensureAudio();
  if (audio.capture) return;
  // The browser's echo cancellation keeps the answer coming out of the speaker from reaching the
  // service as the user's voice (which would interrupt every answer in hands-free mode).
  audio.micStream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  const source = context.createMediaStreamSource(audio.micStream);
  audio.capture = new AudioWorkletNode(context, "pcm-capture", { numberOfInputs: 1, numberOfOutputs: 1 });
  const mute = context.createGain();
  mute.gain.value = 0; // the worklet must be pulled by the graph, but the mic must not reach the speakers
  source.connect(audio.capture).connect(mute).connect(context.destination);
  audio.capture.port.onmessage = ({ data }) => onCaptured(data);
}

async function setHandsFree(on) {
  if (on === handsFree) return;
  if (recording) stopTalking();
  handsFree = on;
  test.handsFree = on;
  ui.talk.disabled = on;
  userSpeaking = false;
  try {
    if (on) {
      await openMicrophone();
      audio.capture.port.postMessage({ type: "start" });
    } else if (audio?.capture) {
      audio.capture.port.postMessage({ type: "stop" });
    }
  } catch (error) {
    handsFree = false;
    test.handsFree = false;
    ui.handsFree.checked = false;
    ui.talk.disabled = false;
    showError(microphoneProblem(error));
    return;
  }
  await stopPlayback(true);
  // The turn detection mode is part of a conversation's config: switching starts a new conversation.
  addNote(on ? "Hands-free: just talk. Talk over an answer to interrupt it." : "Push-to-talk.");
  reconnectNow();
  updateVoiceState();
}

function updateVoiceState() {
  let state = "off";
  if (handsFree) state = userSpeaking ? "speaking" : playing() ? "answering" : "listening";
  test.voiceState = state;
  ui.voiceState.hidden = state === "off" && !recording;
  ui.voiceState.dataset.state = state;
  ui.stateLabel.textContent = { off: "recording", listening: "listening", speaking: "you're speaking", answering: "answering" }[state];
}

function showLevel(level) {
  test.peakLevel = Math.max(test.peakLevel, level);
  // -60 dBFS (silence) to 0 dBFS (full scale), in a bar.
  const db = 20 * Math.log10(Math.max(level, 1e-6));
  ui.levelBar.style.width = `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100)).toFixed(0)}%`;
}

async function startTalking() {
  if (recording || handsFree) return;
  const current = playing();
  test.pressed = { at: performance.now(), turnIndex: current?.index ?? null, playedSamples: current?.playedSamples ?? 0 };
  recording = { pcm: [], samples: 0, starting: true };
  ui.talk.classList.add("recording");
  try {
    await ensureAudio();
    await stopPlayback(true);
    await openMicrophone();
    audio.capture.port.postMessage({ type: "start" });
    updateVoiceState();
    recording.starting = false;
    if (recording.releaseRequested) stopTalking();
  } catch (error) {
    recording = null;
    ui.talk.classList.remove("recording");
    showError(microphoneProblem(error));
  }
}

function stopTalking() {
  if (!recording) return;
  if (recording.starting) {
    recording.releaseRequested = true;
    return;
  }
  ui.talk.classList.remove("recording");
  audio.capture.port.postMessage({ type: "stop" });
}

function onCaptured(message) {
  if (message.type === "pcm") showLevel(message.level ?? 0);
  if (message.type === "pcm" && handsFree) {
    // Only once the conversation (with its turn detection) is open; before that there is nobody to hear.
    if (test.connected && socket?.readyState === WebSocket.OPEN) {
      test.capturedSamples += message.pcm.byteLength / 2;
      socket.send(message.pcm);
    }
  } else if (message.type === "pcm" && recording) {
    recording.pcm.push(new Int16Array(message.pcm.slice(0)));
    recording.samples += message.pcm.byteLength / 2;
    test.capturedSamples += message.pcm.byteLength / 2;
    send(message.pcm);
  } else if (message.type === "stopped" && recording) {
    const finished = recording;
    recording = null;
    updateVoiceState();
    if (!finished.samples) return;
    pendingTurnSentAt = performance.now();
    if (send({ type: "commit" })) addVoiceNote(finished);
  }
}

function microphoneProblem(error) {
  if (error?.name === "NotAllowedError") {
    return "Microphone permission was denied. Allow the microphone for this site to talk; typing still works.";
  }
  if (error?.name === "NotFoundError") return "No microphone was found. Typing still works.";
  if (!window.isSecureContext) return "The microphone needs HTTPS (or localhost). Typing still works.";
  return `The microphone could not start: ${error?.message ?? error}`;
}

// ---------- tools ----------

function runTool(call) {
  // Shown in the chat as it happens: the call, then what the page answered. The last answer makes the
  // service continue on its own (a new turn).
  const { name, arguments: args } = call.function;
  const tool = PAGE_TOOLS[name];
  let result;
  try {
    result = tool ? String(tool.run(JSON.parse(args || "{}"))) : `error: this page has no tool named ${name}`;
  } catch (error) {
    result = `error: ${error.message}`;
  }
  const bubble = addBubble("tool", `🔧 ${name}(${args})`);
  bubble.querySelector(".meta").append(span(`→ ${result}`));
  test.toolCalls.push({ id: call.id, name, arguments: args, result });
  pendingTurnSentAt = performance.now();
  send({ type: "tool_result", tool_call_id: call.id, content: result });
}

// ---------- the chat ----------

function addBubble(role, text) {
  ui.hint.hidden = true;
  const bubble = document.createElement("div");
  bubble.className = `bubble ${role}`;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  const meta = document.createElement("div");
  meta.className = "meta";
  bubble.append(body, meta);
  ui.chat.append(bubble);
  scrollDown();
  return bubble;
}

function addVoiceNote(finished) {
  const bubble = addBubble("user", "");
  const seconds = finished.samples / SOURCE_RATE;
  bubble.querySelector(".text").textContent = `Voice message, ${seconds.toFixed(1)} s`;
  const replay = document.createElement("button");
  replay.type = "button";
  replay.textContent = "▶ replay";
  replay.addEventListener("click", () => new Audio(URL.createObjectURL(wavBlob(finished.pcm))).play());
  bubble.querySelector(".meta").append(replay);
}

function addSpokenNote(ms) {
  const bubble = addBubble("user", "");
  bubble.querySelector(".text").textContent = `You spoke, ${(Math.max(ms, 0) / 1000).toFixed(1)} s`;
}

function addNote(text) {
  const note = document.createElement("p");
  note.className = "note";
  note.textContent = text;
  ui.chat.append(note);
  scrollDown();
}

function downloadLink(turn) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(wavBlob(turn.pcm));
  link.download = `answer-${turn.index}.wav`;
  link.textContent = "⬇ WAV";
  return link;
}

function wavBlob(pieces) {
  const samples = pieces.reduce((sum, piece) => sum + piece.length, 0);
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, value) => [...value].forEach((c, i) => header.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  header.setUint32(4, 36 + samples * 2, true);
  text(8, "WAVEfmt ");
  header.setUint32(16, 16, true);
  header.setUint16(20, 1, true);
  header.setUint16(22, 1, true);
  header.setUint32(24, SOURCE_RATE, true);
  header.setUint32(28, SOURCE_RATE * 2, true);
  header.setUint16(32, 2, true);
  header.setUint16(34, 16, true);
  text(36, "data");
  header.setUint32(40, samples * 2, true);
  return new Blob([header, ...pieces], { type: "audio/wav" });
}

const span = (text) => Object.assign(document.createElement("span"), { textContent: text });
const scrollDown = () => ui.chat.scrollTo({ top: ui.chat.scrollHeight });

function setStatus(text, online) {
  ui.status.textContent = text;
  ui.dot.classList.toggle("online", online);
}
// Open the settings at the key field and say what is needed, in words rather than protocol.
function askForKey() {
  keyRefused = true;
  test.keyRefused = true;
  openSettings(true);
  ui.apiKey.focus();
  setStatus("needs an API key", false);
  showError(
    ui.apiKey.value.trim()
      ? "This server refused this API key. Correct it in the settings above, then press Apply and reconnect."
      : "This server needs an API key. Enter it in the settings above, then press Apply and reconnect.",
  );
}
function openSettings(open) {
  ui.settings.hidden = !open;
  ui.settingsToggle.setAttribute("aria-expanded", String(open));
}
function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = false;
}
function hideError() {
  ui.error.hidden = true;
}

// ---------- controls ----------

ui.textForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = ui.text.value.trim();
  if (!text) return;
  await ensureAudio();
  await stopPlayback(true);
  pendingTurnSentAt = performance.now();
  if (send({ type: "text", text })) {
    addBubble("user", text);
    ui.text.value = "";
  }
});

ui.talk.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  ui.talk.setPointerCapture(event.pointerId);
  startTalking();
});
ui.talk.addEventListener("pointerup", stopTalking);
ui.talk.addEventListener("pointercancel", stopTalking);

const typing = () => ["INPUT", "TEXTAREA"].includes(document.activeElement?.tagName);
window.addEventListener("keydown", (event) => {
  if (event.code === "Space" && !event.repeat && !typing()) {
    event.preventDefault();
    startTalking();
  }
});
window.addEventListener("keyup", (event) => {
  if (event.code === "Space" && !typing()) {
    event.preventDefault();
    stopTalking();
  }
});

ui.handsFree.addEventListener("change", () => setHandsFree(ui.handsFree.checked));

ui.settingsToggle.addEventListener("click", () => openSettings(ui.settings.hidden));
ui.settings.addEventListener("submit", (event) => {
  event.preventDefault();
  keyRefused = false;
  test.keyRefused = false;
  hideError();
  reconnectNow();
});

connect();
