// theme.js: runs before the first paint (a classic script in <head>) so the page never
// flashes the wrong theme: the stored choice, else the system's.
(function () {
  var stored = null;
  try {
    stored = localStorage.getItem('meshllm.theme');
  } catch (e) {
    stored = null;
  }
  var dark = window.matchMedia && window.matchMedia('(prefers-color-scheme: dark)').matches;
  document.documentElement.setAttribute(
    'data-theme',
    stored === 'light' || stored === 'dark' ? stored : dark ? 'dark' : 'light'
  );
})();
