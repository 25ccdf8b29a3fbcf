// The console's one script: click a digest marked `.copy` to copy it (digests are long and
// people paste them into `docker pull` and tickets). Everything else works without JavaScript.
"use strict";
document.addEventListener("click", (event) => {
  const target = event.target.closest(".copy[data-copy]");
  if (!target || !navigator.clipboard) return;
  navigator.clipboard.writeText(target.dataset.copy).then(() => {
    target.classList.add("copied");
    setTimeout(() => target.classList.remove("copied"), 1500);
  });
});
