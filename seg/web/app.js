/*
 * The page of `tools/export.py export.format=web`: the exported segmenter (model.onnx, fed as its
 * metadata model.onnx.json says) on ONNX Runtime Web, on an image chosen, dropped or filmed.
 *
 * The mask is computed as tools/predict.py computes it with a static-size model
 * (seg/export/runtime.py, ExportedPredictor):
 *   - the image (EXIF orientation applied, transparency over white, no colour management) is scaled
 *     down to fit the model's input, never up: longer side to the input size, Python's rounding,
 *     OpenCV's INTER_AREA weights;
 *   - padded bottom/right with the model's mean colour, fed as uint8 RGB NHWC (normalisation inside);
 *   - the output cropped back to the image part and resized to the image: labels by OpenCV's
 *     INTER_NEAREST, logits bilinearly (align_corners=False) before the argmax.
 *
 * Backends: WebGPU when the browser offers an adapter, else WebAssembly (SIMD; threads when the page
 * is cross-origin isolated, as tools/serve.py serves it). URL options: ?backend=auto|wasm|webgpu,
 * &threads=N (WebAssembly threads), &spinning=0 (threads sleep between runs instead of spinning).
 *
 * For tests and benchmarks, window.seg exposes the state, the last mask and a timing loop.
 */
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);

  const state = {
    ready: false,
    meta: null,
    session: null,
    inputName: null,
    outputName: null,
    backend: null, // "webgpu" | "wasm"
    backendText: '',
    threads: null,
    images: 0, // images segmented (files)
    frames: 0, // webcam frames segmented
    errors: [], // every message shown
    current: null, // {rgb, width, height, labels, timing, source, name}
    webcam: null, // {stream, running}
    recent: [], // frame times (ms) of the last webcam frames
  };

  // ---------------------------------------------------------------------------------------------
  // Messages: every failure is shown on the page, never a blank page
  // ---------------------------------------------------------------------------------------------

  function showError(message) {
    const box = $('error');
    box.textContent = message;
    box.hidden = false;
    state.errors.push(message);
    setStatus('');
  }

  function clearError() {
    $('error').hidden = true;
    $('error').textContent = '';
  }

  function setStatus(text) {
    $('status').textContent = text;
  }

  function describe(err) {
    if (!err) return 'unknown error';
    return err.message || String(err);
  }

  window.addEventListener('error', (event) => showError(`Error: ${event.message}`));
  window.addEventListener('unhandledrejection', (event) => showError(`Error: ${describe(event.reason)}`));

  // ---------------------------------------------------------------------------------------------
  // Sizes and resizes, as seg/export/runtime.py (Python rounding, OpenCV's interpolations)
  // ---------------------------------------------------------------------------------------------

  /** Python's round(): halves to even. */
  function roundHalfEven(x) {
    const r = Math.round(x);
    return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  /** letterbox()'s image part: (h, w) scaled down (never up) to fit boxH x boxW. */
  function fitSize(height, width, boxH, boxW) {
    if (boxH === boxW) {
      const scale = Math.min(1.0, boxH / Math.max(height, width));
      return [Math.max(1, roundHalfEven(height * scale)), Math.max(1, roundHalfEven(width * scale))];
    }
    const scale = Math.min(1.0, boxH / height, boxW / width);
    return [
      Math.min(boxH, Math.max(1, roundHalfEven(height * scale))),
      Math.min(boxW, Math.max(1, roundHalfEven(width * scale))),
    ];
  }

  /** OpenCV's INTER_AREA weights along one axis (computeResizeAreaTab): for each output index,
   * the source indices and their weights (float32, as OpenCV keeps them). */
  function areaTable(srcSize, dstSize) {
    const scale = 1 / (dstSize / srcSize);
    const start = new Int32Array(dstSize + 1);
    const index = [];
    const weight = [];
    for (let d = 0; d < dstSize; d++) {
      const f1 = d * scale;
      const f2 = f1 + scale;
      const cell = Math.min(scale, srcSize - f1);
      const s2 = Math.min(Math.floor(f2), srcSize - 1);
      const s1 = Math.min(Math.ceil(f1), s2);
      if (s1 - f1 > 1e-3) {
        index.push(s1 - 1);
        weight.push((s1 - f1) / cell);
      }
      for (let s = s1; s < s2; s++) {
        index.push(s);
        weight.push(1 / cell);
      }
      if (f2 - s2 > 1e-3) {
        index.push(s2);
        weight.push(Math.min(Math.min(f2 - s2, 1), cell) / cell);
      }
      start[d + 1] = index.length;
    }
    return { start, index: Int32Array.from(index), weight: Float32Array.from(weight) };
  }

  function clampByte(v) {
    return v < 0 ? 0 : v > 255 ? 255 : v;
  }

  /** RGB uint8 (width x height x 3) scaled down to dw x dh as cv2.resize(INTER_AREA) does: box
   * averages for integer factors (resizeAreaFast), else area weights summed in float32 (resizeArea). */
  function resizeArea(src, width, height, dw, dh) {
    const dst = new Uint8Array(dw * dh * 3);
    const fx = 1 / (dw / width);
    const fy = 1 / (dh / height);
    const ix = Math.round(fx);
    const iy = Math.round(fy);
    const f32 = Math.fround;
    if (Math.abs(fx - ix) < Number.EPSILON && Math.abs(fy - iy) < Number.EPSILON) {
      const scale = f32(1 / (ix * iy));
      for (let dy = 0; dy < dh; dy++) {
        for (let dx = 0; dx < dw; dx++) {
          for (let c = 0; c < 3; c++) {
            let sum = 0;
            for (let y = dy * iy; y < (dy + 1) * iy; y++) {
              for (let x = dx * ix; x < (dx + 1) * ix; x++) sum += src[(y * width + x) * 3 + c];
            }
            const v = ix === 2 && iy === 2 ? (sum + 2) >> 2 : roundHalfEven(f32(sum * scale));
            dst[(dy * dw + dx) * 3 + c] = clampByte(v);
          }
        }
      }
      return dst;
    }
    const xt = areaTable(width, dw);
    const yt = areaTable(height, dh);
    const row = new Float32Array(dw * 3);
    const acc = new Float32Array(dw * 3);
    for (let dy = 0; dy < dh; dy++) {
      acc.fill(0);
      for (let k = yt.start[dy]; k < yt.start[dy + 1]; k++) {
        const base = yt.index[k] * width * 3;
        const beta = yt.weight[k];
        for (let dx = 0; dx < dw; dx++) {
          let r = 0;
          let g = 0;
          let b = 0;
          for (let j = xt.start[dx]; j < xt.start[dx + 1]; j++) {
            const o = base + xt.index[j] * 3;
            const a = xt.weight[j];
            r = f32(r + f32(src[o] * a));
            g = f32(g + f32(src[o + 1] * a));
            b = f32(b + f32(src[o + 2] * a));
          }
          row[dx * 3] = r;
          row[dx * 3 + 1] = g;
          row[dx * 3 + 2] = b;
        }
        for (let i = 0; i < acc.length; i++) acc[i] = f32(acc[i] + f32(beta * row[i]));
      }
      const out = dy * dw * 3;
      for (let i = 0; i < acc.length; i++) dst[out + i] = clampByte(roundHalfEven(acc[i]));
    }
    return dst;
  }

  /** Labels (h x w, rows `stride` apart) resized to dw x dh by cv2.INTER_NEAREST. */
  function resizeNearest(src, w, h, stride, dw, dh) {
    const dst = new Uint8Array(dw * dh);
    const ifx = 1 / (dw / w);
    const ify = 1 / (dh / h);
    const xs = new Int32Array(dw);
    for (let x = 0; x < dw; x++) xs[x] = Math.min(Math.floor(x * ifx), w - 1);
    for (let y = 0; y < dh; y++) {
      const sy = Math.min(Math.floor(y * ify), h - 1) * stride;
      const o = y * dw;
      for (let x = 0; x < dw; x++) dst[o + x] = src[sy + xs[x]];
    }
    return dst;
  }

  /** For each output line of a bilinear resize (align_corners=False) from `inSize` to `outSize`:
   * the two source lines and the weight of the second (seg/export/runtime.py `_source_lines`). */
  function sourceLines(outSize, inSize) {
    const low = new Int32Array(outSize);
    const high = new Int32Array(outSize);
    const frac = new Float32Array(outSize);
    for (let i = 0; i < outSize; i++) {
      const src = Math.max(0, (i + 0.5) * (inSize / outSize) - 0.5);
      const lo = Math.min(Math.floor(src), inSize - 1);
      low[i] = lo;
      high[i] = Math.min(lo + 1, inSize - 1);
      frac[i] = src - lo;
    }
    return { low, high, frac };
  }

  /** argmax over classes of logits [C, boxH, boxW] cropped to h x w and resized bilinearly to
   * dh x dw (upsample_argmax); the first class wins ties, as torch's argmax. */
  function logitsToLabels(logits, classes, boxH, boxW, h, w, dh, dw) {
    const plane = boxH * boxW;
    const out = new Uint8Array(dw * dh);
    if (h === dh && w === dw) {
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          const p = y * boxW + x;
          let best = 0;
          let top = logits[p];
          for (let c = 1; c < classes; c++) {
            const v = logits[c * plane + p];
            if (v > top) {
              top = v;
              best = c;
            }
          }
          out[y * dw + x] = best;
        }
      }
      return out;
    }
    const ys = sourceLines(dh, h);
    const xs = sourceLines(dw, w);
    for (let y = 0; y < dh; y++) {
      const r0 = ys.low[y] * boxW;
      const r1 = ys.high[y] * boxW;
      const fy = ys.frac[y];
      for (let x = 0; x < dw; x++) {
        const c0 = xs.low[x];
        const c1 = xs.high[x];
        const fx = xs.frac[x];
        let best = 0;
        let top = -Infinity;
        for (let c = 0; c < classes; c++) {
          const o = c * plane;
          const a = logits[o + r0 + c0];
          const b = logits[o + r0 + c1];
          const d = logits[o + r1 + c0];
          const e = logits[o + r1 + c1];
          const upper = a + (b - a) * fx;
          const lower = d + (e - d) * fx;
          const v = upper + (lower - upper) * fy;
          if (v > top) {
            top = v;
            best = c;
          }
        }
        out[y * dw + x] = best;
      }
    }
    return out;
  }

  // ---------------------------------------------------------------------------------------------
  // The model
  // ---------------------------------------------------------------------------------------------

  let inputBuffer = null; // the padded canvas fed to the model, reused from frame to frame

  let queue = Promise.resolve(); // one run of the session at a time (a file chosen during the webcam)

  /** Labels (uint8, height x width) of an RGB image (uint8, width x height x 3), and the timing. */
  function segment(rgb, width, height) {
    const run = queue.then(() => segmentNow(rgb, width, height));
    queue = run.catch(() => undefined);
    return run;
  }

  async function segmentNow(rgb, width, height) {
    const meta = state.meta;
    const boxH = meta.input.height;
    const boxW = meta.input.width || boxH;
    const t0 = performance.now();
    const [h, w] = fitSize(height, width, boxH, boxW);
    const scaled = h === height && w === width ? rgb : resizeArea(rgb, width, height, w, h);
    if (!inputBuffer || inputBuffer.length !== boxH * boxW * 3) {
      inputBuffer = new Uint8Array(boxH * boxW * 3);
    }
    const pad = meta.normalization.mean.map((v) => roundHalfEven(v));
    for (let i = 0; i < inputBuffer.length; i += 3) {
      inputBuffer[i] = pad[0];
      inputBuffer[i + 1] = pad[1];
      inputBuffer[i + 2] = pad[2];
    }
    for (let y = 0; y < h; y++) {
      inputBuffer.set(scaled.subarray(y * w * 3, (y + 1) * w * 3), y * boxW * 3);
    }
    const tensor = new ort.Tensor('uint8', inputBuffer, [1, boxH, boxW, 3]);
    const t1 = performance.now();
    const outputs = await state.session.run({ [state.inputName]: tensor });
    const output = outputs[state.outputName];
    const data = output.data; // downloaded to the CPU (WebGPU too)
    const t2 = performance.now();
    let labels;
    if (meta.output.kind === 'labels') {
      labels = resizeNearest(data, w, h, boxW, width, height);
    } else {
      labels = logitsToLabels(data, output.dims[1], boxH, boxW, h, w, height, width);
    }
    if (output.dispose) output.dispose();
    const t3 = performance.now();
    return { labels, timing: { pre: t1 - t0, model: t2 - t1, post: t3 - t2, total: t3 - t0 }, valid: [h, w] };
  }

  async function webgpuAdapter() {
    if (!navigator.gpu) return false;
    try {
      return Boolean(await navigator.gpu.requestAdapter());
    } catch (err) {
      return false;
    }
  }

  async function createSession(model, backend) {
    const options = { executionProviders: [backend], graphOptimizationLevel: 'all' };
    if (params.get('spinning') === '0') {
      // WebAssembly threads sleep as soon as a run ends (benchmarks that take turns with other work)
      options.extra = { session: { intra_op: { allow_spinning: '0' } } };
    }
    return ort.InferenceSession.create(model, options);
  }

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error(`${src} did not load: the export folder is incomplete`));
      document.head.append(script);
    });
  }

  async function fetchOk(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status} (the export folder is incomplete)`);
    return response;
  }

  async function loadModel() {
    if (location.protocol === 'file:') {
      throw new Error(
        'this page must be served over HTTP (browsers do not load models into file:// pages): ' +
          'run `python tools/serve.py FOLDER` and open the address it prints'
      );
    }
    const meta = await (await fetchOk('model.onnx.json')).json();
    if (!meta.input || !meta.input.height || meta.input.layout !== 'NHWC' || meta.input.dtype !== 'uint8') {
      throw new Error('model.onnx.json: the page needs a static-size model with uint8 RGB NHWC input');
    }
    state.meta = meta;

    const wanted = params.get('backend') || 'auto';
    if (!['auto', 'wasm', 'webgpu'].includes(wanted)) throw new Error(`?backend=${wanted}: use auto, wasm or webgpu`);
    const webgpu = wanted === 'webgpu' || (wanted === 'auto' && (await webgpuAdapter()));
    // One build of ONNX Runtime Web: the WebGPU one (WebAssembly too, the fallback), or the plain
    // WebAssembly one, faster on the CPU.
    await loadScript(webgpu ? 'ort/ort.webgpu.min.js' : 'ort/ort.wasm.min.js');
    if (typeof ort === 'undefined') throw new Error('ONNX Runtime Web did not load');
    ort.env.wasm.wasmPaths = new URL('ort/', location.href).href;
    const threads = parseInt(params.get('threads') || '', 10);
    if (!self.crossOriginIsolated) {
      ort.env.wasm.numThreads = 1; // SharedArrayBuffer needs a cross-origin isolated page
    } else if (threads > 0) {
      ort.env.wasm.numThreads = threads;
    }
    const model = new Uint8Array(await (await fetchOk('model.onnx')).arrayBuffer());

    let note = '';
    if (webgpu) {
      try {
        state.session = await createSession(model, 'webgpu');
        state.backend = 'webgpu';
      } catch (err) {
        if (wanted === 'webgpu') throw new Error(`WebGPU backend failed: ${describe(err)}`);
        note = ` (WebGPU failed: ${describe(err)})`;
      }
    }
    if (!state.session) {
      state.session = await createSession(model, 'wasm');
      state.backend = 'wasm';
    }
    state.inputName = state.session.inputNames[0];
    state.outputName = state.session.outputNames[0];
    state.threads = state.backend === 'wasm' ? ort.env.wasm.numThreads || 1 : null;
    if (state.backend === 'webgpu') {
      state.backendText = 'WebGPU';
    } else {
      const t = state.threads;
      const isolation = self.crossOriginIsolated ? '' : ', page not cross-origin isolated';
      state.backendText = `WebAssembly (SIMD, ${t} thread${t === 1 ? '' : 's'}${isolation})${note}`;
    }
    $('backend').textContent = state.backendText;

    // One run on a blank input: the session's first run sets itself up (several times slower), not
    // the user's first image.
    setStatus('Preparing the model…');
    const blank = new Uint8Array(meta.input.height * (meta.input.width || meta.input.height) * 3);
    const dims = [1, meta.input.height, meta.input.width || meta.input.height, 3];
    const warm = await state.session.run({ [state.inputName]: new ort.Tensor('uint8', blank, dims) });
    for (const value of Object.values(warm)) if (value.dispose) value.dispose();

    const m = meta.model || {};
    const precision = meta.quantize === 'int8' ? 'int8' : 'fp32';
    const multiplier = m.depth_multiplier && m.depth_multiplier !== 1 ? ` x${m.depth_multiplier}` : '';
    $('model-info').textContent =
      `${m.backbone || 'model'}${multiplier} + ${m.head || ''}, ${meta.num_classes} classes, ` +
      `${meta.input.height}x${meta.input.width} input, ${precision}, onnxruntime-web ${ort.env.versions.web || ''}`;
  }

  // ---------------------------------------------------------------------------------------------
  // Images in: files, drops, the webcam
  // ---------------------------------------------------------------------------------------------

  const scratch = document.createElement('canvas');
  const scratchContext = scratch.getContext('2d', { willReadFrequently: true });

  /** RGB bytes of a drawable (ImageBitmap, video) of the given size, over white. */
  function rgbOf(source, width, height) {
    scratch.width = width;
    scratch.height = height;
    scratchContext.fillStyle = '#ffffff';
    scratchContext.fillRect(0, 0, width, height);
    scratchContext.drawImage(source, 0, 0, width, height);
    const rgba = scratchContext.getImageData(0, 0, width, height).data;
    const rgb = new Uint8Array(width * height * 3);
    for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
      rgb[j] = rgba[i];
      rgb[j + 1] = rgba[i + 1];
      rgb[j + 2] = rgba[i + 2];
    }
    return rgb;
  }

  async function decode(file) {
    try {
      return await createImageBitmap(file, {
        imageOrientation: 'from-image',
        colorSpaceConversion: 'none',
        premultiplyAlpha: 'none',
      });
    } catch (err) {
      return null;
    }
  }

  async function segmentFile(file) {
    if (!state.ready) {
      showError('The model is not loaded yet.');
      return;
    }
    clearError();
    stopWebcam();
    setStatus(`Reading ${file.name}…`);
    const bitmap = await decode(file);
    if (!bitmap || !bitmap.width || !bitmap.height) {
      showError(`"${file.name}" is not an image this browser can read (${file.type || 'unknown type'}): choose a JPEG, PNG, WebP, GIF or BMP file.`);
      return;
    }
    let rgb;
    try {
      rgb = rgbOf(bitmap, bitmap.width, bitmap.height);
    } catch (err) {
      showError(`"${file.name}" (${bitmap.width}x${bitmap.height}) is too large for this browser: ${describe(err)}`);
      return;
    } finally {
      bitmap.close();
    }
    setStatus(`Segmenting ${file.name}…`);
    const width = scratch.width;
    const height = scratch.height;
    const result = await segment(rgb, width, height);
    state.current = { rgb, width, height, ...result, source: 'file', name: file.name };
    state.images += 1;
    render();
    showTime(result.timing);
    setStatus(`${file.name}: ${width}x${height}`);
  }

  async function startWebcam() {
    clearError();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError('This browser gives no camera access here (a camera needs https or localhost).');
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } } });
    } catch (err) {
      showError(`No webcam: ${describe(err)}`);
      return;
    }
    const video = $('video');
    video.srcObject = stream;
    await video.play();
    state.webcam = { stream };
    state.recent = [];
    $('webcam').textContent = 'Stop webcam';
    setStatus('Webcam');
    webcamLoop();
  }

  function stopWebcam() {
    if (!state.webcam) return;
    for (const track of state.webcam.stream.getTracks()) track.stop();
    state.webcam = null;
    $('video').srcObject = null;
    $('webcam').textContent = 'Start webcam';
  }

  async function webcamLoop() {
    const video = $('video');
    const camera = state.webcam;
    while (state.webcam === camera) {
      if (video.readyState >= 2 && video.videoWidth > 0) {
        const width = video.videoWidth;
        const height = video.videoHeight;
        const start = performance.now();
        const rgb = rgbOf(video, width, height);
        const result = await segment(rgb, width, height);
        if (state.webcam !== camera) break;
        result.timing.frame = performance.now() - start; // grab + segment
        state.current = { rgb, width, height, ...result, source: 'webcam', name: 'webcam' };
        state.frames += 1;
        render();
        state.recent.push(result.timing.frame);
        if (state.recent.length > 30) state.recent.shift();
        showTime(result.timing, true);
      }
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Drawing: the image with the class overlay, the legend, the picked pixel, the time
  // ---------------------------------------------------------------------------------------------

  function median(values) {
    const sorted = [...values].sort((a, b) => a - b);
    const mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  function showTime(timing, webcam = false) {
    let text = `${timing.total.toFixed(1)} ms (model ${timing.model.toFixed(1)} ms)`;
    if (webcam && state.recent.length) {
      const typical = median(state.recent);
      text = `${timing.frame.toFixed(1)} ms (model ${timing.model.toFixed(1)} ms; median ${typical.toFixed(1)} ms, ${(1000 / typical).toFixed(1)} frames/s)`;
    }
    $('time').textContent = text;
  }

  function opacity() {
    return Number($('opacity').value) / 100;
  }

  function render() {
    const current = state.current;
    if (!current) return;
    const { rgb, width, height, labels } = current;
    const palette = state.meta.palette;
    const alpha = opacity();
    const canvas = $('view');
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    canvas.hidden = false;
    $('hint').hidden = true;
    const context = canvas.getContext('2d');
    const image = context.createImageData(width, height);
    const px = image.data;
    const counts = new Uint32Array(256);
    for (let i = 0, j = 0, k = 0; k < labels.length; i += 4, j += 3, k++) {
      const label = labels[k];
      counts[label] += 1;
      const colour = palette[label] || [255, 255, 255];
      px[i] = Math.round((1 - alpha) * rgb[j] + alpha * colour[0]);
      px[i + 1] = Math.round((1 - alpha) * rgb[j + 1] + alpha * colour[1]);
      px[i + 2] = Math.round((1 - alpha) * rgb[j + 2] + alpha * colour[2]);
      px[i + 3] = 255;
    }
    context.putImageData(image, 0, 0);
    current.counts = counts;
    drawLegend(counts, labels.length);
  }

  function className(label) {
    const names = state.meta.class_names || [];
    return names[label] !== undefined ? names[label] : `class ${label}`;
  }

  function drawLegend(counts, total) {
    const legend = $('legend');
    legend.textContent = '';
    const present = [];
    counts.forEach((n, label) => {
      if (n > 0) present.push([label, n]);
    });
    present.sort((a, b) => b[1] - a[1]);
    for (const [label, n] of present) {
      const item = document.createElement('li');
      item.dataset.label = String(label);
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      const colour = state.meta.palette[label] || [255, 255, 255];
      swatch.style.background = `rgb(${colour.join(',')})`;
      const name = document.createElement('span');
      name.textContent = className(label);
      const share = document.createElement('span');
      share.className = 'share';
      share.textContent = `${((100 * n) / total).toFixed(1)}%`;
      item.append(swatch, name, share);
      legend.append(item);
    }
  }

  function pick(event) {
    const current = state.current;
    if (!current) return;
    const canvas = $('view');
    const rect = canvas.getBoundingClientRect();
    const x = Math.min(current.width - 1, Math.max(0, Math.floor(((event.clientX - rect.left) * current.width) / rect.width)));
    const y = Math.min(current.height - 1, Math.max(0, Math.floor(((event.clientY - rect.top) * current.height) / rect.height)));
    const label = current.labels[y * current.width + x];
    state.picked = { x, y, label, name: className(label) };
    $('picked').textContent = `Pixel (${x}, ${y}): ${className(label)}`;
    for (const item of $('legend').children) item.classList.toggle('picked', item.dataset.label === String(label));
  }

  // ---------------------------------------------------------------------------------------------
  // Wiring
  // ---------------------------------------------------------------------------------------------

  function wire() {
    $('file').addEventListener('change', (event) => {
      const file = event.target.files && event.target.files[0];
      if (file) segmentFile(file).catch((err) => showError(`Error: ${describe(err)}`));
      event.target.value = '';
    });
    const drop = $('drop');
    drop.addEventListener('dragover', (event) => {
      event.preventDefault();
      drop.classList.add('dragging');
    });
    drop.addEventListener('dragleave', () => drop.classList.remove('dragging'));
    drop.addEventListener('drop', (event) => {
      event.preventDefault();
      drop.classList.remove('dragging');
      const file = event.dataTransfer.files && event.dataTransfer.files[0];
      if (file) segmentFile(file).catch((err) => showError(`Error: ${describe(err)}`));
      else showError('Drop an image file.');
    });
    $('webcam').addEventListener('click', () => {
      if (state.webcam) stopWebcam();
      else startWebcam().catch((err) => showError(`Error: ${describe(err)}`));
    });
    $('opacity').addEventListener('input', () => {
      $('opacity-value').textContent = `${$('opacity').value}%`;
      render();
    });
    $('view').addEventListener('click', pick);
  }

  // ---------------------------------------------------------------------------------------------
  // For tests and benchmarks
  // ---------------------------------------------------------------------------------------------

  function toBase64(bytes) {
    let text = '';
    for (let i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(text);
  }

  /** Time `runs` segmentations of the current image after `warmup` untimed ones (real time). */
  async function benchmark(runs = 20, warmup = 3) {
    const current = state.current;
    if (!current) throw new Error('no image: segment one first');
    const total = [];
    const model = [];
    for (let i = 0; i < warmup + runs; i++) {
      const result = await segment(current.rgb, current.width, current.height);
      if (i >= warmup) {
        total.push(result.timing.total);
        model.push(result.timing.model);
      }
    }
    return { frame_ms: total, model_ms: model, median_frame_ms: median(total), median_model_ms: median(model) };
  }

  window.seg = {
    state,
    ready: null,
    segmentFile,
    benchmark,
    /** The last mask: {width, height, labels (base64 of uint8 rows), timing, source, name, valid:
     * the image part of the model's input}; with `withImage`, also rgb: the decoded image (base64). */
    result(withImage = false) {
      const c = state.current;
      if (!c) return null;
      const out = { width: c.width, height: c.height, labels: toBase64(c.labels), timing: c.timing };
      Object.assign(out, { source: c.source, name: c.name, valid: c.valid });
      if (withImage) out.rgb = toBase64(c.rgb);
      return out;
    },
    info() {
      return {
        ready: state.ready,
        backend: state.backend,
        backendText: state.backendText,
        threads: state.threads,
        crossOriginIsolated: self.crossOriginIsolated,
        images: state.images,
        frames: state.frames,
        errors: state.errors.slice(),
        ort: typeof ort !== 'undefined' ? ort.env.versions : null,
      };
    },
  };

  wire();
  window.seg.ready = loadModel()
    .then(() => {
      state.ready = true;
      $('webcam').disabled = false;
      setStatus('Ready: choose or drop an image, or start the webcam.');
      return window.seg.info();
    })
    .catch((err) => {
      showError(`The model could not be loaded: ${describe(err)}`);
      return window.seg.info();
    });
})();
