/* capirelay snippet (GET /capirelay.js), ES5. track() beacons the event to the site's own
 * gateway and gives fbq the same event id. User data goes only in the beacon body. */
(function (w, d) {
  "use strict";
  var stub = w.capirelay; // the pasted stub, if any (snippet.py SNIPPET_STUB)
  if (stub && stub.version) { return; } // loaded already: nothing is sent twice
  var KEY = "capirelay_fbclid";
  var STANDARD = /^(AddPaymentInfo|AddToCart|AddToWishlist|CompleteRegistration|Contact|CustomizeProduct|Donate|FindLocation|InitiateCheckout|Lead|PageView|Purchase|Schedule|Search|StartTrial|SubmitApplication|Subscribe|ViewContent)$/;
  var me = d.currentScript;
  var origin = me && /^https?:\/\/[^\/?#]+/.exec(me.src);
  var cfg = {
    endpoint: (origin ? origin[0] : "") + "/v1/collect",
    pixelId: me && me.getAttribute("data-pixel-id"),
    requireConsent: !!me && me.getAttribute("data-require-consent") === "true"
  };
  var state = null; // null until consent() is called, then {ad_storage, ad_user_data}
  var queue = [];

  function store(value) { // undefined: read, null: remove; blocked storage is no storage
    try {
      var s = w.sessionStorage;
      return value === undefined ? s.getItem(KEY) : value ? s.setItem(KEY, value) : s.removeItem(KEY);
    } catch (e) { return null; }
  }
  function granted() { return !!state && state.ad_storage === "granted" && state.ad_user_data === "granted"; }
  function undecided() { return !state && cfg.requireConsent; }

  // The landing page's click id, kept for the visit so later beacons still build fbc.
  var m = /[?&]fbclid=([A-Za-z0-9_-]+)(&|#|$)/.exec(w.location.search);
  var clickId = m && m[1], urlClick = clickId;
  function remember() {
    if (clickId && (granted() || !state && !cfg.requireConsent)) { store(clickId); }
    clickId = clickId || store();
  }
  remember();

  function uuid() {
    var c = w.crypto, b = new Uint8Array(16), i, h = "";
    if (c && c.randomUUID) { return c.randomUUID(); }
    for (i = 0; i < 16; i++) { b[i] = Math.random() * 256; }
    if (c && c.getRandomValues) { c.getRandomValues(b); }
    b[6] = b[6] & 15 | 64; b[8] = b[8] & 63 | 128; // RFC 4122 version 4
    for (i = 0; i < 16; i++) { h += (i > 3 && i < 11 && i % 2 === 0 ? "-" : "") + (b[i] + 256).toString(16).slice(1); }
    return h;
  }

  function post(text) {
    try { if (w.navigator.sendBeacon(cfg.endpoint, text)) { return; } } catch (e) { /* use fetch */ }
    if (w.fetch) {
      w.fetch(cfg.endpoint, { method: "POST", body: text, keepalive: true, credentials: "include",
        headers: { "Content-Type": "text/plain;charset=UTF-8" } })["catch"](function () {});
    }
  }

  // The page's first-party _fbp/_fbc (the pixel's when it ran first), never rewritten: one the
  // gateway would refuse is left out (browser_ids FBP_RE/FBC_RE: an appendix is 8 chars or a
  // builder's 2-char language token). When missing (_fbc: or of an older click) they are written
  // on the page's own domain as the pixel does, so every beacon of the visit carries one fbp
  // even when the gateway is on another site and cannot set the page's cookies.
  var FBP = /^fb\.\d{1,3}\.\d{1,16}\.\d{1,20}(\.([\w-]{8}|AQ|Ag|Aw|BA|BQ|Bg))?$/,
    FBC = /^fb\.\d{1,3}\.\d{1,16}\.[\w-]+(\.([\w-]{8}|AQ|Ag|Aw|BA|BQ|Bg))?$/;
  var memo = {};
  function cookie(name) {
    var c = new RegExp("(?:^|; *)" + name + "=([^;]*)").exec(d.cookie);
    return c ? c[1] : null;
  }
  function setCookie(name, make) { // the shortest domain suffix that takes the cookie, like the pixel
    var host = w.location.hostname, parts = host.split("."), i, v, attrs;
    var single = parts.length < 2 || /^[\d.]+$|:/.test(host); // localhost, IP: host-only
    attrs = "; path=/; max-age=7776000; SameSite=Lax" + (w.location.protocol === "https:" ? "; Secure" : "");
    for (i = single ? 0 : parts.length - 2; i >= 0; i--) {
      v = make(single ? 0 : parts.length - 1 - i);
      try { d.cookie = name + "=" + v + (single ? "" : "; domain=" + parts.slice(i).join(".")) + attrs; } catch (e) { break; }
      if (cookie(name) === v) { return v; }
    }
    return v; // cookies blocked: still one value for this page
  }
  function browserIds() {
    var now = new Date().getTime(), fbp = cookie("_fbp") || memo.fbp, fbc = cookie("_fbc") || memo.fbc, ids = {};
    if (!fbp) {
      fbp = memo.fbp = setCookie("_fbp", function (i) { return "fb." + i + "." + now + "." + Math.floor(Math.random() * 2147483647); });
    }
    if (urlClick && (!fbc || fbc.split(".")[3] !== urlClick)) {
      fbc = memo.fbc = setCookie("_fbc", function (i) { return "fb." + i + "." + now + "." + urlClick; });
    }
    if (FBP.test(fbp)) { ids.fbp = fbp; }
    if (FBC.test(fbc)) { ids.fbc = fbc; }
    return ids;
  }

  function putIfAny(body, name, o) { for (var k in o) { if (o.hasOwnProperty(k)) { body[name] = o; return; } } }

  function send(ev, deferred) {
    var body = { pixel_id: cfg.pixelId, event_name: ev.name, event_id: ev.id, page_url: ev.url };
    putIfAny(body, "custom_data", ev.params);
    var user = browserIds(), k; // what track() was given wins over the cookies
    for (k in ev.user) { if (ev.user.hasOwnProperty(k)) { user[k] = ev.user[k]; } }
    putIfAny(body, "user_data", user);
    if (ev.referrer) { body.referrer_url = ev.referrer; }
    if (deferred) { body.event_time = ev.time; } // waited for consent: keep when it happened
    if (state) { body.consent = state; }
    if (clickId) { body.fbclid = clickId; }
    if (ev.token) { body.token = ev.token; } // server-signed: binds id, value and currency
    post(JSON.stringify(body));
    if (typeof w.fbq === "function") {
      w.fbq(STANDARD.test(ev.name) ? "track" : "trackCustom", ev.name, ev.params, { eventID: ev.id });
    }
  }

  function track(name, params, user, options) {
    var ev = { name: name, params: params || {}, user: user || {}, id: options && options.eventId || uuid(),
      time: Math.floor(new Date().getTime() / 1000), url: w.location.href, referrer: d.referrer,
      token: options && options.token || null };
    if (undecided()) {
      if (queue.length < 50) { queue.push(ev); }
    } else if (!state || granted()) {
      send(ev, false);
    }
    return ev.id;
  }

  function signal(v) { return v === true || v === "granted" ? "granted" : "denied"; }

  // true, false, or {ad_storage, ad_user_data} as true/false or "granted"/"denied".
  function consent(value) {
    var o = typeof value === "object" && value ? value : { ad_storage: value, ad_user_data: value };
    state = { ad_storage: signal(o.ad_storage), ad_user_data: signal(o.ad_user_data) };
    var waiting = queue;
    queue = [];
    if (!granted()) { store(null); return; }
    remember();
    for (var i = 0; i < waiting.length; i++) { send(waiting[i], true); }
  }

  function init(o) {
    o = o || {};
    if (o.endpoint) { cfg.endpoint = o.endpoint; }
    if (o.pixelId) { cfg.pixelId = String(o.pixelId); }
    if (o.requireConsent !== undefined) { cfg.requireConsent = !!o.requireConsent; }
    if (undecided()) { store(null); }
    if (o.consent !== undefined) { consent(o.consent); }
  }

  var api = { version: "1", init: init, track: track, consent: consent, newEventId: uuid };
  // The calls the pasted stub took before this loaded, in the order they were made; a track
  // keeps the id the stub answered with. A reference the page kept to the stub calls this.
  var waiting = stub && stub.q || [], i, k;
  w.capirelay = api;
  if (stub && stub.q) { for (k in api) { stub[k] = api[k]; } stub.q = []; }
  for (i = 0; i < waiting.length; i++) { replay(waiting[i]); }

  function replay(call) {
    var args = [].slice.call(call[1] || []), o = args[3] || {}, copy = {}, k;
    if (call[0] === "track") {
      for (k in o) { if (o.hasOwnProperty(k)) { copy[k] = o[k]; } }
      copy.eventId = copy.eventId || call[2];
      args[3] = copy;
    }
    try { api[call[0]].apply(api, args); } catch (e) { w.setTimeout(function () { throw e; }, 0); }
  }
}(window, document));
