//! The campaign's network: each node in a network namespace of its own
//! (root only), joined to the campaign's namespace by a veth pair, so a
//! partition is a link taken down; without root, every node on loopback.
//! Either way every primary→peer link goes through an in-process fault
//! proxy (cut, delay, loss) in the campaign's namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

use crate::error::{HarnessError, Result};
use crate::process::run;

/// The namespaces of the three nodes and their links.
pub struct Netns {
    names: Vec<String>,
    /// The campaign-side and the node-side end of each node's veth pair.
    links: Vec<String>,
    node_ends: Vec<String>,
    /// Campaign-side and node-side address of each pair (a /30 each).
    root_ips: Vec<Ipv4Addr>,
    node_ips: Vec<Ipv4Addr>,
    /// Why netem (delay and loss in the kernel) cannot shape a link here;
    /// `None`: it can.
    pub netem_missing: Option<String>,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = run(Command::new("ip").args(args), Duration::from_secs(20))?;
    if out.status.success() {
        return Ok(());
    }
    Err(HarnessError::Check(format!(
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// `tc ARGS`, in namespace `ns` if given.
fn tc(ns: Option<&String>, args: &[&str]) -> Result<std::process::Output> {
    let mut c = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "tc"]);
            c
        }
        None => Command::new("tc"),
    };
    run(c.args(args), Duration::from_secs(20))
}

impl Netns {
    /// Namespaces `dl<tag><i>` for `nodes` nodes. Needs root and iproute2.
    pub fn create(nodes: usize) -> Result<Netns> {
        // Short and unique per process: interface names are at most 15
        // bytes.
        let tag = std::process::id() % 100_000;
        let net = (tag % 250) as u8;
        let mut ns = Netns {
            names: Vec::new(),
            links: Vec::new(),
            node_ends: Vec::new(),
            root_ips: Vec::new(),
            node_ips: Vec::new(),
            netem_missing: None,
        };
        for i in 0..nodes {
            let name = format!("dl{tag}n{i}");
            let (root_end, node_end) = (format!("dl{tag}r{i}"), format!("dl{tag}p{i}"));
            let base = 4 * i as u8;
            let (root_ip, node_ip) = (
                Ipv4Addr::new(10, 199, net, base + 1),
                Ipv4Addr::new(10, 199, net, base + 2),
            );
            ip(&["netns", "add", &name])?;
            ns.names.push(name.clone());
            ip(&[
                "link", "add", &root_end, "type", "veth", "peer", "name", &node_end,
            ])?;
            ns.links.push(root_end.clone());
            ns.node_ends.push(node_end.clone());
            ip(&["link", "set", &node_end, "netns", &name])?;
            ip(&["addr", "add", &format!("{root_ip}/30"), "dev", &root_end])?;
            ip(&["link", "set", &root_end, "up"])?;
            let exec = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &name, "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            exec(&["addr", "add", &format!("{node_ip}/30"), "dev", &node_end])?;
            exec(&["link", "set", &node_end, "up"])?;
            exec(&["link", "set", "lo", "up"])?;
            ns.root_ips.push(root_ip);
            ns.node_ips.push(node_ip);
        }
        // netem is a kernel module that is not everywhere.
        let dev = ns.links[0].clone();
        ns.netem_missing = match tc(
            None,
            &["qdisc", "add", "dev", &dev, "root", "netem", "delay", "1ms"],
        ) {
            Ok(out) if out.status.success() => {
                let _ = tc(None, &["qdisc", "del", "dev", &dev, "root"]);
                None
            }
            Ok(out) => Some(format!(
                "tc netem: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Some(e.to_string()),
        };
        Ok(ns)
    }

    /// Where the node's peers reach it (inside its namespace).
    pub fn node_ip(&self, node: usize) -> IpAddr {
        self.node_ips[node].into()
    }

    /// Where the node reaches the campaign's proxies.
    pub fn root_ip(&self, node: usize) -> IpAddr {
        self.root_ips[node].into()
    }

    /// The command prefix that runs a program in the node's namespace.
    pub fn wrapper(&self, node: usize) -> Vec<String> {
        ["ip", "netns", "exec", &self.names[node]]
            .map(String::from)
            .to_vec()
    }

    /// Shapes both directions of the node's link with netem (delay and
    /// loss), or clears it. Only when [`Netns::netem_missing`] is `None`.
    pub fn set_netem(&self, node: usize, delay: Duration, loss_per_mille: u16) -> Result<()> {
        for (ns, dev) in [
            (None, &self.links[node]),
            (Some(&self.names[node]), &self.node_ends[node]),
        ] {
            let _ = tc(ns, &["qdisc", "del", "dev", dev, "root"]);
            if delay.is_zero() && loss_per_mille == 0 {
                continue;
            }
            let (delay, loss) = (
                format!("{}us", delay.as_micros()),
                format!("{}.{}%", loss_per_mille / 10, loss_per_mille % 10),
            );
            let out = tc(
                ns,
                &[
                    "qdisc", "add", "dev", dev, "root", "netem", "delay", &delay, "loss", &loss,
                ],
            )?;
            if !out.status.success() {
                return Err(HarnessError::Check(format!(
                    "tc netem on {dev}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(())
    }

    /// Cuts the node off (its link down) or joins it again.
    pub fn set_partitioned(&self, node: usize, partitioned: bool) -> Result<()> {
        ip(&[
            "link",
            "set",
            &self.links[node],
            if partitioned { "down" } else { "up" },
        ])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for link in &self.links {
            let _ = ip(&["link", "del", link]);
        }
        for name in &self.names {
            let _ = ip(&["netns", "del", name]);
        }
    }
}
