// Conveyor web UI: auto-refresh of live regions, the connect command and
// the trigger form's parameter rows. Plain JavaScript, no build step.
(function () {
  'use strict';

  var REFRESH_MS = 3000;

  // refresh fetches the page again and swaps every element marked
  // data-refresh for its new version (server-rendered and escaped by the
  // templates). It resolves to the parsed page, or null when the fetch
  // failed or the session is gone.
  function refresh() {
    return fetch(location.href, {credentials: 'same-origin', cache: 'no-store', headers: {Accept: 'text/html'}})
      .then(function (resp) {
        if (resp.redirected && new URL(resp.url).pathname === '/ui/login') {
          signedOut();
          return null;
        }
        if (!resp.ok || resp.redirected) {
          return null;
        }
        return resp.text().then(function (html) {
          var doc = new DOMParser().parseFromString(html, 'text/html');
          document.querySelectorAll('[data-refresh][id]').forEach(function (old) {
            var fresh = doc.getElementById(old.id);
            if (fresh) {
              old.replaceWith(document.adoptNode(fresh));
            }
          });
          return doc;
        });
      })
      .catch(function () { return null; });
  }

  // signedOut says, once, that the session ended (expired, signed out in
  // another tab, or a new token): the page stops refreshing.
  function signedOut() {
    if (document.getElementById('signed-out')) {
      return;
    }
    var p = document.createElement('p');
    p.id = 'signed-out';
    p.className = 'banner';
    p.appendChild(document.createTextNode('Your session has ended: this page no longer updates. '));
    var a = document.createElement('a');
    a.href = '/ui/login?next=' + encodeURIComponent(location.pathname + location.search);
    a.textContent = 'Sign in again';
    p.appendChild(a);
    document.querySelector('main').prepend(p);
  }

  // finished: the page shows something that no longer changes.
  function finished() {
    return document.querySelector('[data-refresh][data-finished="true"]') !== null;
  }

  function poll() {
    if (!document.querySelector('[data-refresh]') || finished() || document.getElementById('signed-out')) {
      return;
    }
    var next = function () { setTimeout(poll, REFRESH_MS); };
    if (document.hidden) {
      next();
      return;
    }
    refresh().then(next);
  }

  // shellQuote quotes an argument for a POSIX shell when it needs it.
  function shellQuote(s) {
    return /^[A-Za-z0-9_@%+=:,.\/-]+$/.test(s) ? s : "'" + s.replace(/'/g, "'\\''") + "'";
  }

  // showConnect fetches a node's secret (signed-in users only) and shows
  // the commands that start its agent, as `conveyor secret` prints them.
  function showConnect(node) {
    var panel = document.getElementById('connect');
    var out = document.getElementById('connect-cmd');
    var err = document.getElementById('connect-error');
    if (!panel) {
      return;
    }
    document.getElementById('connect-node').textContent = node;
    out.textContent = 'loading…';
    err.hidden = true;
    panel.hidden = false;
    fetch('/ui/nodes/' + encodeURIComponent(node) + '/secret', {credentials: 'same-origin', cache: 'no-store'})
      .then(function (resp) {
        return resp.json().catch(function () { return {error: 'HTTP ' + resp.status}; });
      })
      .then(function (body) {
        if (body.error) {
          out.textContent = '';
          err.textContent = body.error;
          err.hidden = false;
          return;
        }
        var args = body.agent_command || [];
        var file = 'secret';
        var i = args.indexOf('-secret-file');
        if (i >= 0 && i + 1 < args.length) {
          file = args[i + 1];
        }
        out.textContent = 'umask 077; echo ' + body.secret + ' > ' + shellQuote(file) + '\n' +
          args.map(shellQuote).join(' ') + '\n';
      });
  }

  document.addEventListener('click', function (ev) {
    var t = ev.target;
    if (!(t instanceof Element)) {
      return;
    }
    var c = t.closest('[data-connect]');
    if (c) {
      showConnect(c.getAttribute('data-connect'));
      return;
    }
    if (t.id === 'connect-close') {
      document.getElementById('connect').hidden = true;
      document.getElementById('connect-cmd').textContent = '';
      return;
    }
  });

  window.Conveyor = {refresh: refresh};
  document.addEventListener('DOMContentLoaded', function () {
    setTimeout(poll, REFRESH_MS);
  });
})();
