"""``GET /ops``: the sync dashboard, one page with no build step and nothing fetched
from the internet. It polls ``/v1/ops/series`` every two seconds and draws each
channel's rate, success, p99 latency and p99 sync lag over the last five
minutes, and the firing alerts. With keys on, a person signs in with an ops key:
the page keeps it in the tab's session storage and signs each request itself
(WebCrypto HMAC-SHA256, the grid's scheme); no secret ever travels in a URL."""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>omnigrid sync</title>
<style>
body{font:14px system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:18px;margin:0 0 8px} .grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px}
.card h2{font-size:13px;margin:0 0 4px;color:#555} canvas{width:100%;height:180px}
table{border-collapse:collapse;width:100%} td,th{border-bottom:1px solid #eee;padding:3px 6px;
text-align:left} #legend span{margin-right:12px} #status{color:#777}
.firing{color:#b00;font-weight:600} form{margin:8px 0} input{margin-right:6px}
</style></head><body>
<h1>omnigrid: every channel's sync health</h1>
<form id="signin"><input id="kid" placeholder="ops key id" autocomplete="off">
<input id="secret" type="password" placeholder="secret" autocomplete="off">
<button>sign in</button> <span id="status">loading</span></form>
<div id="legend"></div>
<div class="grid">
<div class="card"><h2>requests per second</h2><canvas id="rate"></canvas></div>
<div class="card"><h2>success rate (%)</h2><canvas id="success"></canvas></div>
<div class="card"><h2>p99 latency (ms)</h2><canvas id="latency"></canvas></div>
<div class="card"><h2>p99 sync lag (ms)</h2><canvas id="lag"></canvas></div>
</div>
<div class="card" style="margin-top:12px"><h2>alerts firing</h2>
<table><thead><tr><th>rule</th><th>channel</th><th>value</th><th>threshold</th><th>since</th>
</tr></thead><tbody id="alerts"></tbody></table></div>
<div class="card" style="margin-top:12px"><h2>now (last 60 s)</h2>
<table><thead><tr><th>channel</th><th>req/s</th><th>success</th><th>p99 ms</th>
<th>lag p99 ms</th></tr></thead><tbody id="now"></tbody></table></div>
<script>
const COLORS=["#1f77b4","#ff7f0e","#2ca02c","#d62728","#9467bd","#8c564b","#e377c2",
"#7f7f7f","#bcbd22","#17becf"];
const enc=new TextEncoder();
const hex=b=>[...new Uint8Array(b)].map(x=>x.toString(16).padStart(2,"0")).join("");
async function signed(path){
  const kid=sessionStorage.getItem("kid"),secret=sessionStorage.getItem("secret");
  const headers={};
  if(kid&&secret&&crypto.subtle){
    const ts=Math.floor(Date.now()/1000).toString();
    const nonce=hex(crypto.getRandomValues(new Uint8Array(16)));
    const bodyHash=hex(await crypto.subtle.digest("SHA-256",enc.encode("")));
    const key=await crypto.subtle.importKey("raw",enc.encode(secret),
      {name:"HMAC",hash:"SHA-256"},false,["sign"]);
    const sig=hex(await crypto.subtle.sign("HMAC",key,
      enc.encode(["GET",path,ts,nonce,bodyHash].join("\\n"))));
    headers.Authorization=`OG1-HMAC-SHA256 key=${kid}, ts=${ts}, nonce=${nonce}, sig=${sig}`;
  }
  const r=await fetch(path,{headers});
  if(!r.ok) throw new Error(r.status===401||r.status===403?"sign in with an ops key":
    "the grid answered "+r.status);
  return r.json();
}
document.getElementById("signin").onsubmit=e=>{e.preventDefault();
  sessionStorage.setItem("kid",document.getElementById("kid").value.trim());
  sessionStorage.setItem("secret",document.getElementById("secret").value);
  document.getElementById("secret").value="";refresh();};
function draw(id,series,t0,t1,fixedMax){
  const c=document.getElementById(id),w=c.width=c.clientWidth*2,h=c.height=360,g=c.getContext("2d");
  g.clearRect(0,0,w,h);g.font="20px sans-serif";g.fillStyle="#999";
  let max=fixedMax||0;
  for(const pts of Object.values(series))for(const [,v] of pts)if(v!=null&&v>max)max=v;
  max=max||1;g.fillText(max.toFixed(max<10?1:0),4,22);g.fillText("0",4,h-6);
  Object.entries(series).forEach(([ch,pts],i)=>{g.strokeStyle=COLORS[i%COLORS.length];
    g.lineWidth=3;g.beginPath();let on=false;
    for(const [t,v] of pts){if(v==null){on=false;continue;}
      const x=(t-t0)/Math.max(1,t1-t0)*(w-60)+50,y=h-10-(v/max)*(h-40);
      on?g.lineTo(x,y):g.moveTo(x,y);on=true;}
    g.stroke();});
}
async function refresh(){
  const st=document.getElementById("status");
  try{
    const data=await signed("/v1/ops/series?window_s=300");
    const pts=data.points,chans=[...new Set(pts.map(p=>p.channel))].sort();
    const now=Math.floor(Date.now()/1000),t0=now-300;
    const per=f=>Object.fromEntries(chans.map(ch=>[ch,pts.filter(p=>p.channel===ch)
      .map(p=>[p.t,f(p)])]));
    draw("rate",per(p=>p.requests),t0,now);
    draw("success",per(p=>p.requests?100*(1-p.failures/p.requests):null),t0,now,100);
    draw("latency",per(p=>p.p99_ms),t0,now);draw("lag",per(p=>p.lag_p99_ms),t0,now);
    document.getElementById("legend").innerHTML=chans.map((ch,i)=>
      `<span style="color:${COLORS[i%COLORS.length]}">&#9632; ${ch}</span>`).join("");
    const sync=await signed("/v1/ops/sync?window_s=60");
    document.getElementById("now").innerHTML=Object.entries(sync.channels).map(([ch,s])=>
      `<tr><td>${ch}</td><td>${(s.requests/60).toFixed(1)}</td><td>${s.success_rate==null?"-":
      (100*s.success_rate).toFixed(2)+"%"}</td><td>${s.p99_ms??"-"}</td>
      <td>${s.sync_lag_p99_ms??"-"}</td></tr>`).join("");
    document.getElementById("alerts").innerHTML=data.alerts.length?data.alerts.map(a=>
      `<tr class="firing"><td>${a.rule}</td><td>${a.channel}</td><td>${a.value}</td>
      <td>${a.threshold}</td><td>${a.fired_at}</td></tr>`).join(""):
      "<tr><td colspan=5>none</td></tr>";
    st.textContent="live: "+new Date().toLocaleTimeString();
  }catch(e){st.textContent=e.message;}
}
refresh();setInterval(refresh,2000);
</script></body></html>
"""
