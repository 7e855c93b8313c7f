// Automatic logoff in the browser as well: the server has already ended an idle session; this only shows it.
(function () {
  var s = parseInt(document.body.dataset.idleTimeout || "0", 10);
  if (!s) return;
  var timer;
  function arm() { clearTimeout(timer); timer = setTimeout(function () { window.location.reload(); }, (s + 1) * 1000); }
  ["keydown", "mousedown", "touchstart"].forEach(function (e) { document.addEventListener(e, arm, { passive: true }); });
  arm();
})();
