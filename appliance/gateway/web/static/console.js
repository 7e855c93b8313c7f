// The analyst console: post the prompt, read the server-sent events and show the answer as it streams.
(function () {
  var form = document.getElementById("ask");
  if (!form) return;
  var out = document.getElementById("answer"), status = document.getElementById("status");
  form.addEventListener("submit", async function (ev) {
    ev.preventDefault();
    out.textContent = ""; status.textContent = "Generating…";
    var body = {
      model: form.model.value, prompt: form.prompt.value,
      max_new_tokens: parseInt(form.max_new_tokens.value || "64", 10)
    };
    var resp;
    try {
      resp = await fetch("/console/generate", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf },
        body: JSON.stringify(body)
      });
    } catch (e) { status.textContent = "The appliance could not be reached."; return; }
    document.getElementById("audit-id").textContent = resp.headers.get("X-Audit-Id") || "–";
    document.getElementById("fingerprint").textContent = (resp.headers.get("X-Adapter-Fingerprint") || "–").slice(0, 16);
    if (resp.status === 401) { window.location = "/login?m=expired"; return; }
    if (!resp.ok) {
      var err = {}; try { err = await resp.json(); } catch (e) {}
      status.textContent = "Refused (" + resp.status + "): " + (err.error || resp.statusText); return;
    }
    var reader = resp.body.getReader(), dec = new TextDecoder(), buf = "";
    while (true) {
      var r = await reader.read(); if (r.done) break;
      buf += dec.decode(r.value, { stream: true });
      var parts = buf.split("\n\n"); buf = parts.pop();
      parts.forEach(function (p) {
        if (p.indexOf("data:") !== 0) return;
        var msg = JSON.parse(p.slice(5));
        if (msg.error) { status.textContent = "Error: " + msg.error; return; }
        out.textContent += msg.text;
        if (msg.done) status.textContent = "Done.";
      });
    }
  });
})();
