() => {
  // Citation and passage links carry a permalink (?passage=<id>). A plain click opens the
  // passage inside the app, next to where it was clicked, instead of reloading the page;
  // a middle/ctrl click or a link marked .permalink still opens the permalink itself.
  if (window.__qaLinks) return;
  window.__qaLinks = true;

  function openPassage(pid, scope) {
    const holder = document.getElementById(scope + "-open-pid");
    const box = holder && holder.querySelector("textarea, input");
    const btn = document.getElementById(scope + "-open-btn");
    if (!box || !btn) return false;
    box.value = pid;
    box.dispatchEvent(new Event("input", { bubbles: true }));
    // Let the framework take the new value before the click reads it.
    setTimeout(() => btn.click(), 30);
    return true;
  }

  function flashCard(pid) {
    document.querySelectorAll(".qa-card.flash").forEach((el) => el.classList.remove("flash"));
    document.querySelectorAll(".qa-card[data-pid]").forEach((el) => {
      if (el.getAttribute("data-pid") === pid) {
        el.classList.add("flash");
        el.scrollIntoView({ block: "nearest" });
      }
    });
  }

  document.addEventListener(
    "click",
    (e) => {
      if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
      const a = e.target && e.target.closest ? e.target.closest("a[href]") : null;
      if (!a || a.classList.contains("permalink")) return;
      let url;
      try { url = new URL(a.getAttribute("href"), window.location.href); } catch (err) { return; }
      if (url.origin !== window.location.origin) return;
      const pid = url.searchParams.get("passage");
      if (!pid) return;
      const scope = a.closest("#lookup-panel") ? "lookup" : "chat";
      if (openPassage(pid, scope)) {
        e.preventDefault();
        e.stopPropagation();
        if (a.classList.contains("cite")) flashCard(pid);
      }
    },
    true
  );

  // Gradio labels each chat message with its raw content, which is HTML here: give
  // screen readers the visible text instead.
  let pending = false;
  function relabel() {
    pending = false;
    document.querySelectorAll('#chatbot [data-testid="bot"], #chatbot [data-testid="user"]')
      .forEach((el) => {
        const label = el.getAttribute("aria-label") || "";
        if (label && label === el.dataset.qaLabel) return;
        const who = el.getAttribute("data-testid") === "user" ? "Question: " : "Answer: ";
        const text = who + (el.innerText || "").replace(/\s+/g, " ").trim().slice(0, 600);
        el.dataset.qaLabel = text;
        el.setAttribute("aria-label", text);
      });
  }
  new MutationObserver(() => {
    if (!pending) { pending = true; window.requestAnimationFrame(relabel); }
  }).observe(document.body, { subtree: true, childList: true, characterData: true,
                              attributes: true, attributeFilter: ["aria-label"] });
}
