/* The join pages inside WeChat: what "send to a friend" and "share to Moments" show,
   through the official account's JS-SDK (wx.config signed by the server). The page's
   own meta tags hold the same title, description and icon for other apps. */
(function () {
  var me = document.currentScript;
  if (!me || !window.wx) { return; }
  var share = {
    title: me.dataset.title,
    desc: me.dataset.description,
    link: me.dataset.link,
    imgUrl: me.dataset.image
  };
  var config = JSON.parse(me.dataset.config);
  config.debug = false;
  wx.config(config);
  wx.ready(function () {
    wx.updateAppMessageShareData(share);
    wx.updateTimelineShareData({ title: share.title, link: share.link, imgUrl: share.imgUrl });
  });
})();
