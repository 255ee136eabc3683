// Live job progress: each [data-job-status] element polls its job's JSON and refreshes
// its [data-field] children until the job ends; a job page then reloads once to show
// the result. No framework, no build step.
"use strict";
(function () {
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);
  function show(el, job) {
    const pct = Math.round(job.progress * 100) + "%";
    const values = {state: job.state, stage: job.stage || "", percent: pct,
                    log_tail: job.log_tail, error: job.error || "", timing: job.timing || "",
                    live: job.live_text || ""};
    for (const f of el.querySelectorAll("[data-field]")) {
      const name = f.dataset.field;
      if (name === "progress") { f.value = job.progress; f.textContent = pct; }
      else if (name in values) { f.textContent = values[name]; }
      if (name === "state") { f.className = "badge state-" + job.state; }
      if (name === "error") { f.hidden = !job.error; }
    }
  }
  function watch(el) {
    if (FINAL.has(el.dataset.state)) return;
    async function tick() {
      try {
        const r = await fetch(el.dataset.jobStatus, {headers: {Accept: "application/json"}});
        if (!r.ok) throw new Error("HTTP " + r.status);
        const job = await r.json();
        show(el, job);
        if (FINAL.has(job.state)) { if (el.dataset.reload) location.reload(); return; }
      } catch (err) {
        const stage = el.querySelector("[data-field=stage]");
        if (stage) stage.textContent = "(live updates paused: " + err.message + ")";
      }
      setTimeout(tick, 1000);
    }
    setTimeout(tick, 1000);
  }
  document.querySelectorAll("[data-job-status]").forEach(watch);
})();
