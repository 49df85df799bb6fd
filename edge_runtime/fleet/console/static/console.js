// Live updates for the edge-runtime fleet console: fetch this page's <main> again whenever the
// console's record changes (/api/page holds the request until it does) and swap it in.
// No framework, no build step; the server renders and escapes everything.
(function () {
  "use strict";
  var body = document.body;
  if (!body || body.getAttribute("data-live") === "0") return;
  var main = document.getElementById("main");
  var status = document.getElementById("live-status");
  var change = parseInt(body.getAttribute("data-change") || "-1", 10);

  function say(text) { if (status) status.textContent = text; }

  function poll() {
    var path = location.pathname + location.search;
    var url = "/api/page?path=" + encodeURIComponent(path) + "&after=" + change;
    fetch(url, { cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (doc) {
        if (doc.change !== change) {
          main.innerHTML = doc.main;
          change = doc.change;
          body.setAttribute("data-change", String(change));
        }
        say("live · updated " + new Date().toLocaleTimeString());
        setTimeout(poll, 1000);
      })
      .catch(function () {
        say("console unreachable, retrying");
        setTimeout(poll, 3000);
      });
  }
  say("live");
  setTimeout(poll, 100);
})();
