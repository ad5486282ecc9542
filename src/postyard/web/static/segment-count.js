// The segment editor's live member count: a progressive enhancement of its
// "Count members" button, which works without this file (it posts the form and
// the page comes back with the count). Here the form's fields are posted to
// /segments/count as they change, and the answer replaces the count's text.
// Nothing is stored by counting.
"use strict";

(function () {
  const form = document.getElementById("segment-form");
  const output = document.getElementById("member-count");
  if (!form || !output || !window.fetch) {
    return;
  }
  const url = form.dataset.countUrl;
  const WAIT_MS = 400;
  let timer = null;
  let asked = 0;
  let changed = false;

  function show(text, bad) {
    output.textContent = text;
    output.classList.toggle("bad", bad);
  }

  async function count() {
    const ticket = ++asked;
    let answer;
    try {
      const response = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams(new FormData(form)),
      });
      answer = (response.headers.get("Content-Type") || "").startsWith("application/json")
        ? await response.json()
        : null;
    } catch (error) {
      answer = null;
    }
    if (ticket !== asked) {
      return; // a later change has asked again: its answer is the one to show
    }
    if (answer && typeof answer.member_count === "number") {
      const n = answer.member_count;
      show(`${n} ${n === 1 ? "person matches" : "people match"} these conditions now.`, false);
    } else if (!changed) {
      return; // a form not yet filled in: its hint stays until something is typed
    } else if (answer && answer.error) {
      show(`Cannot count yet: ${answer.error.message}`, true);
    } else {
      show("The count is not available: use “Count members”.", true);
    }
  }

  function later(event) {
    if (event.target.name === "name") {
      return; // the name does not change who matches
    }
    changed = true;
    window.clearTimeout(timer);
    timer = window.setTimeout(count, WAIT_MS);
  }

  form.addEventListener("input", later);
  form.addEventListener("change", later);
  if (!("counted" in output.dataset)) {
    count(); // a page the server has just counted for needs no second count
  }
})();
