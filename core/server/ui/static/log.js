// Conveyor web UI: the live build log. It streams the log with fetch and
// a ReadableStream from a byte offset, resumes from that offset when the
// stream drops, renders ANSI SGR colours (also when an escape sequence is
// split across chunks) and builds the DOM from text nodes and spans only:
// whatever a build prints is shown as text, never parsed as HTML.
(function () {
  'use strict';

  var FINAL = {success: true, failure: true, cancelled: true, timeout: true};
  // MAX_ESCAPE bounds an escape sequence kept across chunks; a longer one
  // is no sequence, its ESC is dropped and the rest shown.
  var MAX_ESCAPE = 4096;
  // Control characters but tab and newline (ESC is parsed before): not
  // shown. A carriage return's overwrite is not rendered either.
  var CONTROLS = /[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f]/g;

  var PLAIN = makeStyle({});

  // makeStyle returns an immutable text style with its key: segments of
  // equal keys merge into one node.
  function makeStyle(s) {
    var st = {
      fg: s.fg === undefined ? null : s.fg, bg: s.bg === undefined ? null : s.bg,
      bold: !!s.bold, faint: !!s.faint, italic: !!s.italic, underline: !!s.underline, inverse: !!s.inverse
    };
    st.key = (st.fg === null && st.bg === null && !st.bold && !st.faint && !st.italic && !st.underline && !st.inverse) ? '' :
      [st.fg, st.bg, +st.bold, +st.faint, +st.italic, +st.underline, +st.inverse].join('|');
    return Object.freeze(st);
  }

  function with_(st, changes) {
    var s = {fg: st.fg, bg: st.bg, bold: st.bold, faint: st.faint, italic: st.italic, underline: st.underline, inverse: st.inverse};
    for (var k in changes) {
      s[k] = changes[k];
    }
    return makeStyle(s);
  }

  // color256 is a 256-colour index as a palette index (0-15) or CSS.
  function color256(n) {
    if (!(n >= 0 && n <= 255)) {
      return null;
    }
    if (n < 16) {
      return n;
    }
    if (n < 232) {
      n -= 16;
      var c = function (v) { return v ? 55 + v * 40 : 0; };
      return 'rgb(' + c(Math.floor(n / 36)) + ',' + c(Math.floor(n / 6) % 6) + ',' + c(n % 6) + ')';
    }
    var g = 8 + (n - 232) * 10;
    return 'rgb(' + g + ',' + g + ',' + g + ')';
  }

  function rgb(r, g, b) {
    var ok = function (v) { return v >= 0 && v <= 255; };
    return ok(r) && ok(g) && ok(b) ? 'rgb(' + r + ',' + g + ',' + b + ')' : null;
  }

  // AnsiParser turns text with ANSI escape sequences into styled
  // segments. It keeps an unfinished sequence for the next push, so that
  // chunk boundaries never show escape codes.
  function AnsiParser() {
    this.pending = '';
    this.style = PLAIN;
  }

  // push parses the next text and returns its segments [{text, style}].
  AnsiParser.prototype.push = function (text) {
    var s = this.pending ? this.pending + text : text;
    this.pending = '';
    var out = [];
    var i = 0;
    var n = s.length;
    while (i < n) {
      var esc = s.indexOf('\x1b', i);
      if (esc < 0) {
        this.emit(out, s.slice(i));
        break;
      }
      if (esc > i) {
        this.emit(out, s.slice(i, esc));
      }
      var end = this.escape(s, esc);
      if (end < 0) {
        if (n - esc <= MAX_ESCAPE) {
          this.pending = s.slice(esc);
          break;
        }
        end = esc + 1;
      }
      i = end;
    }
    return out;
  };

  AnsiParser.prototype.emit = function (out, text) {
    text = text.replace(CONTROLS, '');
    if (!text) {
      return;
    }
    var last = out[out.length - 1];
    if (last && last.style === this.style) {
      last.text += text;
    } else {
      out.push({text: text, style: this.style});
    }
  };

  // escape handles the sequence at s[at] (an ESC) and returns where the
  // text goes on, or -1 when the sequence is not complete yet.
  AnsiParser.prototype.escape = function (s, at) {
    var n = s.length;
    var j, k;
    if (at + 1 >= n) {
      return -1;
    }
    var c = s.charCodeAt(at + 1);
    if (c === 0x5b) { // CSI: ESC [ params intermediates final
      for (j = at + 2; j < n; j++) {
        k = s.charCodeAt(j);
        if (k >= 0x40 && k <= 0x7e) {
          if (k === 0x6d) { // m: SGR
            this.sgr(s.slice(at + 2, j));
          }
          return j + 1; // other CSI sequences (cursor, erase) are dropped
        }
        if (k < 0x20 || k > 0x3f) {
          return j; // malformed: drop what came so far
        }
      }
      return -1;
    }
    if (c === 0x5d) { // OSC: up to BEL or ST (ESC \), dropped
      for (j = at + 2; j < n; j++) {
        k = s.charCodeAt(j);
        if (k === 0x07) {
          return j + 1;
        }
        if (k === 0x1b) {
          if (j + 1 >= n) {
            return -1;
          }
          return s.charCodeAt(j + 1) === 0x5c ? j + 2 : j;
        }
      }
      return -1;
    }
    if (c === 0x28 || c === 0x29) { // charset designation: ESC ( X
      return at + 3 <= n ? at + 3 : -1;
    }
    return at + 2; // any other two-character escape
  };

  // sgr applies Select Graphic Rendition parameters ("1;31", "38;5;208",
  // "38;2;255;128;0", "38:2::255:128:0").
  AnsiParser.prototype.sgr = function (params) {
    if (/[^0-9;:]/.test(params)) {
      return; // private sequence
    }
    var st = this.style;
    var parts = params === '' ? ['0'] : params.split(';');
    for (var i = 0; i < parts.length; i++) {
      var p = parts[i];
      if (p.indexOf(':') >= 0) { // sub-parameters: 38:5:N, 38:2:[cs]:R:G:B, 4:3
        var sub = p.split(':');
        var code = +sub[0];
        if (code === 38 || code === 48) {
          var col = null;
          if (sub[1] === '5') {
            col = color256(+sub[2]);
          } else if (sub[1] === '2' && sub.length >= 5) {
            col = rgb(+sub[sub.length - 3], +sub[sub.length - 2], +sub[sub.length - 1]);
          }
          if (col !== null) {
            st = with_(st, code === 38 ? {fg: col} : {bg: col});
          }
        } else if (code === 4) {
          st = with_(st, {underline: sub[1] !== '0'});
        }
        continue;
      }
      var v = p === '' ? 0 : +p;
      if (v === 38 || v === 48) {
        var color = null;
        if (parts[i + 1] === '5') {
          color = color256(+parts[i + 2]);
          i += 2;
        } else if (parts[i + 1] === '2') {
          color = rgb(+parts[i + 2], +parts[i + 3], +parts[i + 4]);
          i += 4;
        } else {
          break; // unknown colour space: ignore the rest
        }
        if (color !== null) {
          st = with_(st, v === 38 ? {fg: color} : {bg: color});
        }
        continue;
      }
      st = applyCode(st, v);
    }
    this.style = st;
  };

  function applyCode(st, v) {
    switch (true) {
      case v === 0: return PLAIN;
      case v === 1: return with_(st, {bold: true});
      case v === 2: return with_(st, {faint: true});
      case v === 3: return with_(st, {italic: true});
      case v === 4 || v === 21: return with_(st, {underline: true});
      case v === 7: return with_(st, {inverse: true});
      case v === 22: return with_(st, {bold: false, faint: false});
      case v === 23: return with_(st, {italic: false});
      case v === 24: return with_(st, {underline: false});
      case v === 27: return with_(st, {inverse: false});
      case v >= 30 && v <= 37: return with_(st, {fg: v - 30});
      case v === 39: return with_(st, {fg: null});
      case v >= 40 && v <= 47: return with_(st, {bg: v - 40});
      case v === 49: return with_(st, {bg: null});
      case v >= 90 && v <= 97: return with_(st, {fg: v - 90 + 8});
      case v >= 100 && v <= 107: return with_(st, {bg: v - 100 + 8});
    }
    return st; // blink, conceal, fonts...: tolerated, not shown
  }

  // render is a segment's DOM node: a text node, or a span whose classes
  // and colours say its style. Text only ever goes in as textContent.
  function render(style, text) {
    if (style.key === '') {
      return document.createTextNode(text);
    }
    var span = document.createElement('span');
    var fg = style.fg;
    var bg = style.bg;
    if (style.inverse) {
      if (fg === null && bg === null) {
        span.classList.add('ansi-inverse');
      } else {
        fg = style.bg === null ? 'var(--log-bg)' : style.bg;
        bg = style.fg === null ? 'var(--log-fg)' : style.fg;
      }
    }
    if (typeof fg === 'number') {
      span.classList.add('ansi-fg-' + fg);
    } else if (fg !== null) {
      span.style.color = fg;
    }
    if (typeof bg === 'number') {
      span.classList.add('ansi-bg-' + bg);
    } else if (bg !== null) {
      span.style.backgroundColor = bg;
    }
    if (style.bold) { span.classList.add('ansi-bold'); }
    if (style.faint) { span.classList.add('ansi-faint'); }
    if (style.italic) { span.classList.add('ansi-italic'); }
    if (style.underline) { span.classList.add('ansi-underline'); }
    span.textContent = text;
    return span;
  }

  // CHUNK_LINES is how many lines a block of the log holds. A full block
  // is sealed: with content-visibility it is laid out only when scrolled
  // into view, so a log of millions of lines stays as quick as a short one.
  var CHUNK_LINES = 1000;
  // LINE_PX estimates a line's height for a sealed block not laid out yet.
  var LINE_PX = 18;

  // LogView appends segments to the log element in batches, once per
  // animation frame, however fast they come.
  function LogView(pre, follow) {
    this.pre = pre;
    this.follow = follow;
    this.queue = [];
    this.scheduled = false;
    this.flushBound = this.flush.bind(this);
    this.chunk = null;
    this.chunkLines = 0;
  }

  // append adds text of one style, in blocks of CHUNK_LINES lines.
  LogView.prototype.append = function (style, text) {
    while (text) {
      if (!this.chunk || this.chunkLines >= CHUNK_LINES) {
        this.seal();
      }
      var room = CHUNK_LINES - this.chunkLines;
      var lines = 0;
      var cut = -1;
      for (var pos = text.indexOf('\n'); pos >= 0 && lines < room; pos = text.indexOf('\n', pos + 1)) {
        lines++;
        cut = pos + 1;
      }
      if (lines < room || cut === text.length) {
        this.chunk.appendChild(render(style, text));
        this.chunkLines += lines;
        return;
      }
      this.chunk.appendChild(render(style, text.slice(0, cut)));
      this.chunkLines += lines;
      text = text.slice(cut);
    }
  };

  // seal closes the current block and opens the next.
  LogView.prototype.seal = function () {
    if (this.chunk) {
      this.chunk.style.containIntrinsicSize = 'auto ' + (this.chunkLines * LINE_PX) + 'px';
      this.chunk.classList.add('sealed');
    }
    this.chunk = document.createElement('div');
    this.chunk.className = 'log-chunk';
    this.chunkLines = 0;
    this.pre.appendChild(this.chunk);
  };

  LogView.prototype.add = function (segs) {
    for (var i = 0; i < segs.length; i++) {
      this.queue.push(segs[i]);
    }
    if (this.queue.length && !this.scheduled) {
      this.scheduled = true;
      if (document.hidden) {
        setTimeout(this.flushBound, 250); // no animation frames in a hidden tab
      } else {
        requestAnimationFrame(this.flushBound);
      }
    }
  };

  LogView.prototype.flush = function () {
    this.scheduled = false;
    var q = this.queue;
    this.queue = [];
    if (!q.length) {
      return;
    }
    var style = q[0].style;
    var texts = [];
    for (var i = 0; i < q.length; i++) {
      if (q[i].style.key !== style.key) {
        this.append(style, texts.join(''));
        style = q[i].style;
        texts = [];
      }
      texts.push(q[i].text);
    }
    this.append(style, texts.join(''));
    if (!this.follow || this.follow.checked) {
      this.pre.scrollTop = this.pre.scrollHeight;
    }
  };

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  function buildStatus() {
    var el = document.querySelector('[data-build-status]');
    return el ? el.getAttribute('data-build-status') : '';
  }

  function setState(text) {
    var el = document.getElementById('log-state');
    if (el) {
      el.textContent = text;
    }
  }

  // follow streams the log of the page's build until the build is over.
  async function follow(pre) {
    var view = new LogView(pre, document.getElementById('log-follow'));
    var src = pre.getAttribute('data-src');
    var decoder = new TextDecoder('utf-8');
    var parser = new AnsiParser();
    var offset = +(pre.getAttribute('data-offset') || 0);
    var first = true;
    var delay = 500;
    for (;;) {
      var lost = false;
      try {
        var resp = await fetch(src + '?follow=true&offset=' + offset, {credentials: 'same-origin', cache: 'no-store'});
        if (resp.status === 401 || resp.status === 403) {
          setState('sign in to see the log');
          return;
        }
        if (!resp.ok) {
          throw new Error('HTTP ' + resp.status);
        }
        if (!first) {
          pre.setAttribute('data-resumes', +(pre.getAttribute('data-resumes') || 0) + 1);
          setState('following (resumed at byte ' + offset + ')');
        } else {
          setState('following');
        }
        first = false;
        var reader = resp.body.getReader();
        for (;;) {
          var r = await reader.read();
          if (r.done) {
            break;
          }
          offset += r.value.byteLength;
          view.add(parser.push(decoder.decode(r.value, {stream: true})));
          delay = 500;
        }
      } catch (e) {
        lost = true;
      }
      // The stream ends with the build, or when the connection drops.
      if (!FINAL[buildStatus()]) {
        await window.Conveyor.refresh();
      }
      var status = buildStatus();
      if (FINAL[status]) {
        view.add(parser.push(decoder.decode()));
        view.flush();
        var end = document.getElementById('log-end');
        end.textContent = 'Build finished: ' + status;
        end.className = status === 'success' ? 'ok' : 'bad';
        end.hidden = false;
        setState('finished · ' + offset + ' bytes');
        return;
      }
      setState(lost ? 'connection lost: resuming at byte ' + offset + '…' : 'waiting for the build…');
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
  }

  window.ConveyorLog = {AnsiParser: AnsiParser, render: render};
  document.addEventListener('DOMContentLoaded', function () {
    var pre = document.getElementById('log');
    if (pre) {
      follow(pre);
    }
  });
})();
